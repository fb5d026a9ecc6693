package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// Behaviours that upstream's test/service/ratelimit_test.go, test/redis and test/limiter
// check against mocks (a mocked config and cache), replayed end to end: the rules those
// tests hand the service are written here as YAML files in upstream's format, and the
// answers those tests assert are checked on the wire. README examples are read from the
// module's README.md.

// writeConfig writes YAML files (name -> content) into a fresh config directory.
func (e *env) writeConfig(name string, files map[string]string) (string, error) {
	dir, err := e.configDir(name)
	if err != nil {
		return "", err
	}
	for file, content := range files {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

const serviceRules = `domain: different-domain
descriptors:
  - key: foo
    value: bar
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: shadowed
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
`

const someDomainRules = `domain: some-domain
descriptors:
  - key: foo
    value: bar
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: baz
    value: qux
    rate_limit:
      unlimited: true
`

const shadowRules = `domain: shadow-domain
descriptors:
  - key: foo
    value: bar
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
  - key: hello
    value: world
    rate_limit:
      unit: minute
      requests_per_unit: 1
`

const quotaRules = `domain: quota-domain
descriptors:
  - key: regular
    value: limit
    rate_limit:
      unit: minute
      requests_per_unit: 5
  - key: quota
    value: limit
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: quota1
    value: limit
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 5
  - key: quota2
    value: limit
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 3
`

const hitsRules = `domain: domain
descriptors:
  - key: key
    value: value
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key2
    value: value2
    descriptors:
      - key: subkey2
        value: subvalue2
        rate_limit:
          unit: minute
          requests_per_unit: 10
  - key: big
    rate_limit:
      unit: minute
      requests_per_unit: 10
`

const overrideRules = `domain: override-domain
descriptors:
  - key: shadowed
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 5
`

const unitRules = `domain: units
descriptors:
  - key: weekly
    rate_limit:
      unit: week
      requests_per_unit: 5
  - key: monthly
    rate_limit:
      unit: month
      requests_per_unit: 5
  - key: yearly
    rate_limit:
      unit: year
      requests_per_unit: 5
  - key: capitalised
    rate_limit:
      unit: Hour
      requests_per_unit: 5
  - key: blocked
    rate_limit:
      unit: minute
      requests_per_unit: 0
  - key: no_requests_per_unit
    rate_limit:
      unit: minute
  - key: per_minute
    rate_limit:
      unit: minute
      requests_per_unit: 100
  - key: per_hour
    rate_limit:
      unit: hour
      requests_per_unit: 100
  - key: to_number
    value: 2061111111
    rate_limit:
      unit: minute
      requests_per_unit: 5
  - key: status
    value: 404
    descriptors:
      - key: retry
        value: true
        rate_limit:
          unit: minute
          requests_per_unit: 5
`

func runServiceCases(r *run) error {
	one := func(domain string, entries ...[2]string) *rlsv3.RateLimitRequest {
		return request(domain, [][][2]string{entries}, 1)
	}
	kv := func(k, v string) [2]string { return [2]string{k, v} }
	open := func(name, feature string, headers bool, files map[string]string) (*scenario, error) {
		dir, err := r.env.writeConfig(name, files)
		if err != nil {
			return nil, err
		}
		return r.scenario(name, feature, batonOptions{configDir: dir, headers: headers}), nil
	}

	// TestUnlimited: a limited, an unmatched and an unlimited descriptor in one request.
	s, err := open("ratelimit_test.go TestUnlimited", "unlimited", false, map[string]string{"some.yaml": someDomainRules})
	if err != nil {
		return err
	}
	s.expect("limited, unmatched and unlimited descriptors",
		request("some-domain", [][][2]string{{kv("foo", "bar")}, {kv("hello", "world")}, {kv("baz", "qux")}}, 1),
		response(ok, limited(ok, 10, minute, 9), noRule(), unlimited()))
	s.close()

	// TestService / TestMixedRuleShadowMode: an over-limit descriptor beside an unmatched
	// one; a shadow rule past its limit beside an enforced one.
	s, err = open("ratelimit_test.go TestMixedRuleShadowMode", "shadow mode", false, map[string]string{"shadow.yaml": shadowRules})
	if err != nil {
		return err
	}
	both := request("shadow-domain", [][][2]string{{kv("foo", "bar")}, {kv("hello", "world")}}, 1)
	s.expect("first request: both within their limit", both, response(ok, limited(ok, 1, minute, 0), limited(ok, 1, minute, 0)))
	s.expect("second request: the shadow rule answers OK, the enforced one OVER_LIMIT", both,
		response(overLimit, limited(ok, 1, minute, 0), limited(overLimit, 1, minute, 0)))
	s.expect("TestService: an over-limit descriptor beside an unmatched one",
		request("shadow-domain", [][][2]string{{kv("hello", "world")}, {kv("hello", "other")}}, 1),
		response(overLimit, limited(overLimit, 1, minute, 0), noRule()))
	s.close()

	// TestServicePerDescriptorQuotaMode / TestServiceQuotaModeOnly.
	s, err = open("ratelimit_test.go TestServicePerDescriptorQuotaMode", "quota_mode", false, map[string]string{"quota.yaml": quotaRules})
	if err != nil {
		return err
	}
	mixed := request("quota-domain", [][][2]string{{kv("regular", "limit")}, {kv("quota", "limit")}}, 1)
	for i := uint32(1); i <= 6; i++ {
		var want *rlsv3.RateLimitResponse
		switch {
		case i <= 3:
			want = response(ok, limited(ok, 5, minute, 5-i), limited(ok, 3, minute, 3-i))
		case i <= 5:
			want = response(ok, limited(ok, 5, minute, 5-i), quotaOver(3, minute))
		default:
			want = response(overLimit, limited(overLimit, 5, minute, 0), quotaOver(3, minute))
		}
		s.expect(fmt.Sprintf("regular (5/minute) + quota_mode (3/minute) #%d", i), mixed, want)
	}
	quotaOnly := request("quota-domain", [][][2]string{{kv("quota1", "limit")}, {kv("quota2", "limit")}}, 1)
	for i := uint32(1); i <= 4; i++ {
		want := response(ok, limited(ok, 5, minute, 5-i), limited(ok, 3, minute, 3-i))
		if i == 4 {
			want = response(ok, limited(ok, 5, minute, 1), quotaOver(3, minute))
		}
		s.expect(fmt.Sprintf("TestServiceQuotaModeOnly: two quota_mode rules #%d", i), quotaOnly, want)
	}
	s.close()

	// TestServiceWithDefaultRatelimitHeaders: LIMIT_RESPONSE_HEADERS_ENABLED=true adds
	// RateLimit-Limit, -Remaining and -Reset of the descriptor closest to its limit (an
	// over-limit one first), once each. "*" stands for the reset, compared below.
	s, err = open("ratelimit_test.go TestServiceWithDefaultRatelimitHeaders", "RateLimit-* headers", true, map[string]string{"service.yaml": serviceRules})
	if err != nil {
		return err
	}
	headersStep := func(name string, req *rlsv3.RateLimitRequest, want *rlsv3.RateLimitResponse, from int) {
		s.step(name, req, func(got *rlsv3.RateLimitResponse) error {
			if err := equalAsUpstream(want, got); err != nil {
				return err
			}
			if from < 0 {
				return nil
			}
			// RateLimit-Reset is the chosen descriptor's reset (upstream computes both
			// with utils.CalculateReset from the same clock).
			reset := fmt.Sprint(statusAt(got, from).GetDurationUntilReset().GetSeconds())
			if value := got.ResponseHeadersToAdd[2].Value; value != reset {
				return fmt.Errorf("RateLimit-Reset %s, but the descriptor it describes resets in %s s", value, reset)
			}
			return nil
		})
	}
	fooAndHello := request("different-domain", [][][2]string{{kv("foo", "bar")}, {kv("hello", "world")}}, 1)
	headersStep("first request: headers of the limited descriptor", fooAndHello,
		withHeaders(response(ok, limited(ok, 10, minute, 9), noRule()), "RateLimit-Limit", "10", "RateLimit-Remaining", "9", "RateLimit-Reset", "*"), 0)
	headersStep("unmatched descriptor only: no headers", one("different-domain", kv("hello", "world")), response(ok, noRule()), -1)
	headersStep("two limited descriptors: headers of the one closest to its limit",
		request("different-domain", [][][2]string{{kv("foo", "bar")}, {kv("key2", "x")}}, 1),
		withHeaders(response(ok, limited(ok, 10, minute, 8), limited(ok, 3, minute, 2)), "RateLimit-Limit", "3", "RateLimit-Remaining", "2", "RateLimit-Reset", "*"), 1)
	for i := 0; i < 8; i++ {
		if s.baton != nil {
			_, _ = s.baton.shouldRateLimit(one("different-domain", kv("foo", "bar")))
		}
	}
	headersStep("over limit: headers of the over-limit descriptor", fooAndHello,
		withHeaders(response(overLimit, limited(overLimit, 10, minute, 0), noRule()), "RateLimit-Limit", "10", "RateLimit-Remaining", "0", "RateLimit-Reset", "*"), 0)
	shadowedReq := one("different-domain", kv("shadowed", "x"))
	headersStep("shadow rule within its limit", shadowedReq,
		withHeaders(response(ok, limited(ok, 1, minute, 0)), "RateLimit-Limit", "1", "RateLimit-Remaining", "0", "RateLimit-Reset", "*"), 0)
	headersStep("shadow rule past its limit: OK, and the headers say 0 remain", shadowedReq,
		withHeaders(response(ok, limited(ok, 1, minute, 0)), "RateLimit-Limit", "1", "RateLimit-Remaining", "0", "RateLimit-Reset", "*"), 0)
	s.close()

	// test/redis testRedis and utils.GetHitsAddends: hits_addend 0 counts 1, a
	// descriptor's own hits_addend (even 0) wins over the request's.
	s, err = open("fixed_cache_impl_test.go hits_addend", "hits_addend", false, map[string]string{"hits.yaml": hitsRules})
	if err != nil {
		return err
	}
	key := func(hits uint32) *rlsv3.RateLimitRequest {
		return request("domain", [][][2]string{{kv("key", "value")}}, hits)
	}
	s.expect("request hits_addend 0 counts 1", key(0), response(ok, limited(ok, 10, minute, 9)))
	s.expect("request hits_addend 3", key(3), response(ok, limited(ok, 10, minute, 6)))
	s.expect("descriptor hits_addend 0 only looks", withDescriptorHits(key(1), 0), response(ok, limited(ok, 10, minute, 6)))
	s.expect("descriptor hits_addend 0 wins over request hits_addend 5", withDescriptorHits(key(5), 0), response(ok, limited(ok, 10, minute, 6)))
	s.expect("descriptor hits_addend 2 wins over request hits_addend 5", withDescriptorHits(key(5), 2), response(ok, limited(ok, 10, minute, 4)))
	s.expect("request hits_addend 7 goes over the limit", key(7), response(overLimit, limited(overLimit, 10, minute, 0)))
	s.expectIn("counting differences", "after the over-limit request, a look (descriptor hits_addend 0)", withDescriptorHits(key(1), 0),
		response(overLimit, limited(overLimit, 10, minute, 0)))
	s.expectIn("counting differences", "after the over-limit request, hits_addend 4", key(4), response(overLimit, limited(overLimit, 10, minute, 0)))
	bigHits := request("domain", [][][2]string{{kv("big", "x")}}, 20)
	s.expect("hits_addend 20 on a limit of 10 is over the limit", bigHits, response(overLimit, limited(overLimit, 10, minute, 0)))
	s.expectIn("counting differences", "after hits_addend 20 on a limit of 10, a look (descriptor hits_addend 0)",
		withDescriptorHits(request("domain", [][][2]string{{kv("big", "x")}}, 1), 0),
		response(overLimit, limited(overLimit, 10, minute, 0)))
	s.expect("testRedis: per-descriptor hits [0, 1] on an unmatched and a nested descriptor",
		withDescriptorHits(request("domain", [][][2]string{{kv("key2", "value2")}, {kv("key2", "value2"), kv("subkey2", "subvalue2")}}, 1), 0, 1),
		response(ok, noRule(), limited(ok, 10, minute, 9)))
	s.close()

	// config.GetLimit: an override from Envoy replaces the config's limit on a known
	// domain, is never in shadow mode, and an override of 0 blocks.
	s, err = open("config.GetLimit overrides", "overrides", false, map[string]string{"override.yaml": overrideRules})
	if err != nil {
		return err
	}
	s.expect("override requests_per_unit 0 denies",
		withOverride(one("override-domain", kv("anything", "x")), 0, 0, typev3.RateLimitUnit_MINUTE),
		response(overLimit, limited(overLimit, 0, minute, 0)))
	shadowed := withOverride(one("override-domain", kv("shadowed", "y")), 0, 1, typev3.RateLimitUnit_MINUTE)
	s.expect("override 1/minute on a shadow_mode rule: first request", shadowed, response(ok, limited(ok, 1, minute, 0)))
	s.expect("override 1/minute on a shadow_mode rule is enforced", shadowed, response(overLimit, limited(overLimit, 1, minute, 0)))
	s.close()

	// Units beyond the README's four, upstream's case-insensitive unit names, block rules.
	s, err = open("units and block rules", "units", false, map[string]string{"units.yaml": unitRules})
	if err != nil {
		return err
	}
	s.expect("unit week", one("units", kv("weekly", "a")), response(ok, limited(ok, 5, week, 4)))
	s.expect("unit month", one("units", kv("monthly", "a")), response(ok, limited(ok, 5, month, 4)))
	s.expect("unit year", one("units", kv("yearly", "a")), response(ok, limited(ok, 5, year, 4)))
	s.expect("unit Hour (upstream upper-cases unit names)", one("units", kv("capitalised", "a")), response(ok, limited(ok, 5, hour, 4)))
	// yaml.v2 reads a plain scalar into a string field as written: numbers and booleans
	// are values like any other.
	s.expect("value: 2061111111 (a YAML number) matches \"2061111111\"", one("units", kv("to_number", "2061111111")), response(ok, limited(ok, 5, minute, 4)))
	s.expect("value: 404 and value: true (YAML number and boolean) match as text", one("units", kv("status", "404"), kv("retry", "true")), response(ok, limited(ok, 5, minute, 4)))
	s.expect("requests_per_unit 0 blocks", one("units", kv("blocked", "a")), response(overLimit, limited(overLimit, 0, minute, 0)))
	s.expect("requests_per_unit missing blocks (it reads as 0)", one("units", kv("no_requests_per_unit", "a")), response(overLimit, limited(overLimit, 0, minute, 0)))
	// limiter.GenerateCacheKey puts the window start (now / unit * unit) into the counter
	// key and utils.CalculateReset answers unit - now % unit: windows start on the clock's
	// unit boundaries, not at a counter's first hit.
	for _, c := range []struct {
		key  string
		unit int64
	}{{"per_minute", 60}, {"per_hour", 3600}, {"weekly", 7 * 86400}, {"monthly", 30 * 86400}, {"yearly", 365 * 86400}} {
		req := one("units", kv(c.key, "reset-check"))
		before := time.Now().Unix()
		s.stepIn("windows on the clock", fmt.Sprintf("%s: duration_until_reset = %d - now %% %d", c.key, c.unit, c.unit), req, func(got *rlsv3.RateLimitResponse) error {
			after := time.Now().Unix()
			reset := statusAt(got, 0).GetDurationUntilReset()
			if reset == nil {
				return errors.New("no duration_until_reset: " + formatResponse(got))
			}
			var upstream []string
			for t := before; t <= after; t++ {
				if reset.Seconds == c.unit-t%c.unit && reset.Nanos == 0 {
					return nil
				}
				upstream = append(upstream, fmt.Sprint(c.unit-t%c.unit))
			}
			return fmt.Errorf("duration_until_reset %ds%dns; upstream answers %s s, the rest of the current %d s window counted from the Unix epoch", reset.Seconds, reset.Nanos, strings.Join(upstream, " or "), c.unit)
		})
	}
	s.close()

	return runReadmeExamples(r)
}

// readmeExamples returns the ```yaml blocks of upstream's README.md that declare domain,
// in the README's order.
func readmeExamples(upstream, domain string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(upstream, "README.md"))
	if err != nil {
		return nil, err
	}
	var found []string
	declares := regexp.MustCompile(`(?m)^domain: ` + regexp.QuoteMeta(domain) + `$`)
	for _, block := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(data), -1) {
		if declares.MatchString(block[1]) {
			found = append(found, block[1])
		}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("README.md has no yaml block for domain %s", domain)
	}
	return found, nil
}

// runReadmeExamples replays what the README states of its examples: 1 to 6 (matching,
// nesting, blocking, unlimited, shadow mode), 7 (replaces), 9 (wildcards) and 11
// (share_threshold). Example 4's second block declares the same domain as its first, so
// it gets a baton of its own.
func runReadmeExamples(r *run) error {
	kv := func(k, v string) [2]string { return [2]string{k, v} }
	files := map[string]string{}
	var example4 []string
	for _, domain := range []string{"mongo_cps", "messaging", "edge_proxy_per_ip", "example4", "internal", "example6", "example7", "example9", "example11"} {
		blocks, err := readmeExamples(r.env.upstream, domain)
		if err != nil {
			return err
		}
		files[domain+".yaml"] = blocks[0]
		if domain == "example4" {
			example4 = blocks
		}
	}
	if len(example4) != 2 {
		return fmt.Errorf("README.md: expected two example4 blocks, found %d", len(example4))
	}
	dir, err := r.env.writeConfig("readme", files)
	if err != nil {
		return err
	}
	s := r.scenario("README examples", "matching", batonOptions{configDir: dir})
	defer s.close()

	s.expect("example1: database=users 500/second", single("mongo_cps", kv("database", "users")), response(ok, limited(ok, 500, second, 499)))
	s.expect("example1: database=default 500/second", single("mongo_cps", kv("database", "default")), response(ok, limited(ok, 500, second, 499)))
	s.expect("example1: database=other matches nothing", single("mongo_cps", kv("database", "other")), response(ok, noRule()))
	s.expect("example2: marketing to a number and the number itself, in one request",
		request("messaging", [][][2]string{{kv("message_type", "marketing"), kv("to_number", "2061111111")}, {kv("to_number", "2061111111")}}, 1),
		response(ok, limited(ok, 5, day, 4), limited(ok, 100, day, 99)))
	s.expect("example2: another number gets its own 5 a day",
		single("messaging", kv("message_type", "marketing"), kv("to_number", "2062222222")),
		response(ok, limited(ok, 5, day, 4)))
	s.expect("example3: remote_address=50.0.0.1 10/second", single("edge_proxy_per_ip", kv("remote_address", "50.0.0.1")), response(ok, limited(ok, 10, second, 9)))
	s.expect("example3: remote_address=50.0.0.5 is blocked", single("edge_proxy_per_ip", kv("remote_address", "50.0.0.5")), response(overLimit, limited(overLimit, 0, second, 0)))
	s.expect("example4 (first block): a two-entry descriptor does not match a one-level rule",
		single("example4", kv("key", "value"), kv("subkey", "subvalue")), response(ok, noRule()))
	s.expect("example5: ldap is unlimited", single("internal", kv("ldap", "x")), response(ok, unlimited()))
	s.expect("example5: azure 100/minute", single("internal", kv("azure", "x")), response(ok, limited(ok, 100, minute, 99)))
	s.exhaust("example6: user-a of auth-service is in shadow mode (10/second)", single("example6", kv("service", "auth-service"), kv("user", "user-a")), 10, second, true)
	s.exhaust("example6: user-b is limited to 20/second", single("example6", kv("service", "auth-service"), kv("user", "user-b")), 20, second, false)
	s.feature = "replaces"

	// Example 7: "(key_1, value_1), (key_2, value_2), (user, bkthomps): 10 / sec since the
	// (key_1, value_1), (user, bkthomps) rule was replaced and this will not affect the
	// 5 / sec limit".
	s.expect("example7: the replaced rule answers no limit, the replacing one 10/second",
		request("example7", [][][2]string{{kv("key_1", "value_1"), kv("user", "bkthomps")}, {kv("key_2", "value_2"), kv("user", "bkthomps")}}, 1),
		response(ok, noRule(), limited(ok, 10, second, 9)))
	s.expect("example7: the replaced rule alone was not counted (5/second, 4 left)",
		request("example7", [][][2]string{{kv("key_1", "value_1"), kv("user", "bkthomps")}}, 1),
		response(ok, named("specific_limit", limited(ok, 5, second, 4))))

	// Example 9: value: value* matches value_1 and value_2, 20 a minute each.
	s.expectIn("wildcards + share_threshold", "example9: key1=value_1 matches value*", single("example9", kv("key1", "value_1")), response(ok, limited(ok, 20, minute, 19)))
	s.expectIn("wildcards + share_threshold", "example9: key1=value_2 matches value* apart", single("example9", kv("key1", "value_2")), response(ok, limited(ok, 20, minute, 19)))

	// Example 11: "If 5 requests are made for files/a.pdf and 5 requests for files/b.csv,
	// a request for files/c.txt will be rate limited"; files_no_share values are isolated.
	for i := 0; i < 10; i++ {
		value := "files/a.pdf"
		if i >= 5 {
			value = "files/b.csv"
		}
		s.expectIn("wildcards + share_threshold", fmt.Sprintf("example11: files=%s #%d", value, i%5+1), single("example11", kv("files", value)),
			response(ok, limited(ok, 10, hour, uint32(9-i))))
	}
	s.expectIn("wildcards + share_threshold", "example11: files=files/c.txt is over the shared threshold", single("example11", kv("files", "files/c.txt")),
		response(overLimit, limited(overLimit, 10, hour, 0)))
	for i := 0; i < 10; i++ {
		s.expectIn("wildcards + share_threshold", fmt.Sprintf("example11: files_no_share=files_no_share/a.pdf #%d", i+1), single("example11", kv("files_no_share", "files_no_share/a.pdf")),
			response(ok, limited(ok, 10, hour, uint32(9-i))))
	}
	s.expectIn("wildcards + share_threshold", "example11: files_no_share=files_no_share/b.csv keeps its own threshold", single("example11", kv("files_no_share", "files_no_share/b.csv")),
		response(ok, limited(ok, 10, hour, 9)))

	dir, err = r.env.writeConfig("readme-example4", map[string]string{"example4.yaml": example4[1]})
	if err != nil {
		return err
	}
	s4 := r.scenario("README example4 (second block)", "matching", batonOptions{configDir: dir})
	defer s4.close()
	s4.expect("example4 (second block): the nested rule matches, 300/second",
		single("example4", kv("key", "value"), kv("subkey", "subvalue")), response(ok, limited(ok, 300, second, 299)))
	return nil
}

func single(domain string, entries ...[2]string) *rlsv3.RateLimitRequest {
	return request(domain, [][][2]string{entries}, 1)
}
