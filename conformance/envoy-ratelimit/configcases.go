package main

import (
	"fmt"
	"path/filepath"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// The cases of upstream's test/config/config_test.go, end to end: each GetLimit call
// becomes the request Envoy would send with that descriptor, against a baton reading the
// same file from test/config. Where upstream asserts the matched limit, the answer must
// carry it (and, the first hit counting one, remaining = limit - 1); where it asserts nil,
// the descriptor must be unmatched (OK, no limit). Assertions on stats keys alone
// (detailed_metric, value_to_metric, FullKey) have no ShouldRateLimit counterpart.

func configFile(upstream, name string) string {
	return filepath.Join(upstream, "test", "config", name)
}

func runConfigCases(r *run) error {
	up := r.env.upstream
	open := func(test, feature string, files ...string) (*scenario, error) {
		var paths []string
		for _, f := range files {
			paths = append(paths, configFile(up, f))
		}
		dir, err := r.env.configDir(test, paths...)
		if err != nil {
			return nil, err
		}
		return r.scenario(test, feature, batonOptions{configDir: dir}), nil
	}
	const domain = "test-domain"
	one := func(entries ...[2]string) *rlsv3.RateLimitRequest {
		return request(domain, [][][2]string{entries}, 1)
	}
	kv := func(k, v string) [2]string { return [2]string{k, v} }

	s, err := open("config_test.go TestBasicConfig", "matching", "basic_config.yaml")
	if err != nil {
		return err
	}
	s.expect("foo_domain is unknown", request("foo_domain", [][][2]string{{kv("key1", "value1")}}, 1), response(ok, noRule()))
	s.expect("key1=something matches nothing", one(kv("key1", "something")), response(ok, noRule()))
	s.expect("key1=value1 has no limit of its own", one(kv("key1", "value1")), response(ok, noRule()))
	s.expect("key2=value2,subkey=subvalue is deeper than the rules", one(kv("key2", "value2"), kv("subkey", "subvalue")), response(ok, noRule()))
	s.expect("key5=value5,subkey5=subvalue matches no child", one(kv("key5", "value5"), kv("subkey5", "subvalue")), response(ok, noRule()))
	s.expect("key1=value1,subkey1=something: 5/second", one(kv("key1", "value1"), kv("subkey1", "something")), response(ok, limited(ok, 5, second, 4)))
	s.expect("key1=value1,subkey1=subvalue1: 10/second", one(kv("key1", "value1"), kv("subkey1", "subvalue1")), response(ok, limited(ok, 10, second, 9)))
	s.expect("key2=something: 20/minute", one(kv("key2", "something")), response(ok, limited(ok, 20, minute, 19)))
	s.expect("key2=value2: 30/minute", one(kv("key2", "value2")), response(ok, limited(ok, 30, minute, 29)))
	s.expect("key2=value3 is whitelisted (no limit)", one(kv("key2", "value3")), response(ok, noRule()))
	s.expect("key3=foo: 1/hour", one(kv("key3", "foo")), response(ok, limited(ok, 1, hour, 0)))
	s.expect("key4=foo: 1/day named key4_rate_limit", one(kv("key4", "foo")), response(ok, named("key4_rate_limit", limited(ok, 1, day, 0))))
	s.expect("key5=value5 (a node with a limit and children): 15/day", one(kv("key5", "value5")), response(ok, limited(ok, 15, day, 14)))
	s.expect("key5=value5,subkey5=subvalue5: 25/day", one(kv("key5", "value5"), kv("subkey5", "subvalue5")), response(ok, limited(ok, 25, day, 24)))
	s.expect("key6=foo is unlimited", one(kv("key6", "foo")), response(ok, unlimited()))
	s.expectIn("detailed_metric", "key7=unspecified_value (detailed_metric): 70/minute", one(kv("key7", "unspecified_value")), response(ok, limited(ok, 70, minute, 69)))
	s.expectIn("detailed_metric", "key7=another_value (detailed_metric) counts apart", one(kv("key7", "another_value")), response(ok, limited(ok, 70, minute, 69)))
	s.close()

	s, err = open("config_test.go TestConfigLimitOverride", "overrides", "basic_config.yaml")
	if err != nil {
		return err
	}
	s.expect("override on unknown foo_domain is ignored",
		withOverride(request("foo_domain", [][][2]string{{kv("key1", "value1")}}, 1), 0, 10, typev3.RateLimitUnit_DAY),
		response(ok, noRule()))
	s.expect("override 10/day on key1=value1,subkey1=something",
		withOverride(one(kv("key1", "value1"), kv("subkey1", "something")), 0, 10, typev3.RateLimitUnit_DAY),
		response(ok, limited(ok, 10, day, 9)))
	// Upstream's counter key holds the window start but not the unit, so in the first
	// hour of a UTC day the hour's counter is the day's (limiter/cache_key.go): 40 left
	// then, 41 otherwise. Either is upstream's answer.
	s.step("override 42/hour on the same descriptor",
		withOverride(one(kv("key1", "value1"), kv("subkey1", "something")), 0, 42, typev3.RateLimitUnit_HOUR),
		func(got *rlsv3.RateLimitResponse) error {
			fresh := equalAsUpstream(response(ok, limited(ok, 42, hour, 41)), got)
			if fresh != nil && equalAsUpstream(response(ok, limited(ok, 42, hour, 40)), got) == nil {
				return nil
			}
			return fresh
		})
	s.expect("override 42/hour on subkey1=something_else counts apart",
		withOverride(one(kv("key1", "value1"), kv("subkey1", "something_else")), 0, 42, typev3.RateLimitUnit_HOUR),
		response(ok, limited(ok, 42, hour, 41)))
	s.close()

	// TestShadowModeConfig asserts ShadowMode on the matched limit; on the wire that is
	// the answer one past the limit: OK for a shadow rule, OVER_LIMIT otherwise.
	s, err = open("config_test.go TestShadowModeConfig", "shadow mode", "shadowmode_config.yaml")
	if err != nil {
		return err
	}
	s.exhaust("key1=value1,subkey1=something (5/second) is enforced", one(kv("key1", "value1"), kv("subkey1", "something")), 5, second, false)
	s.exhaust("key1=value1,subkey1=subvalue1 (10/second) is shadow", one(kv("key1", "value1"), kv("subkey1", "subvalue1")), 10, second, true)
	s.exhaust("key2=something (20/minute) is shadow", one(kv("key2", "something")), 20, minute, true)
	s.exhaust("key2=value2 (30/minute) is enforced", one(kv("key2", "value2")), 30, minute, false)
	s.close()

	s, err = open("config_test.go TestWildcardConfig", "wildcards + share_threshold", "wildcard.yaml")
	if err != nil {
		return err
	}
	s.expect("noVal=foo1: 20/minute", one(kv("noVal", "foo1")), response(ok, limited(ok, 20, minute, 19)))
	s.expect("noVal=foo2 counts apart", one(kv("noVal", "foo2")), response(ok, limited(ok, 20, minute, 19)))
	s.expect("wild=foo1 matches foo*", one(kv("wild", "foo1")), response(ok, limited(ok, 20, minute, 19)))
	s.expect("wild=foo2 matches foo* and counts apart", one(kv("wild", "foo2")), response(ok, limited(ok, 20, minute, 19)))
	s.expect("nestedWild=val1,wild=goo2 matches goo*", one(kv("nestedWild", "val1"), kv("wild", "goo2")), response(ok, limited(ok, 20, minute, 19)))
	s.expect("wild=bar does not match foo*", one(kv("wild", "bar")), response(ok, noRule()))
	s.expect("noWild=foo1 does not match foo", one(kv("noWild", "foo1")), response(ok, noRule()))
	s.expect("midWildcard=barab matches nothing", one(kv("midWildcard", "barab")), response(ok, noRule()))
	s.expect("midWild=barab: a * inside a value is no wildcard", one(kv("midWild", "barab")), response(ok, noRule()))
	s.close()

	s, err = open("config_test.go TestShareThreshold", "wildcards + share_threshold", "share_threshold.yaml")
	if err != nil {
		return err
	}
	for i, value := range []string{"files/a.pdf", "files/b.csv", "files/c.txt"} {
		s.expect(fmt.Sprintf("files=%s shares files/* (100/minute)", value), one(kv("files", value)), response(ok, limited(ok, 100, minute, uint32(99-i))))
	}
	s.expectIn("value_to_metric", "route=api/v1,method=GET (share_threshold + value_to_metric): 60/minute", one(kv("route", "api/v1"), kv("method", "GET")), response(ok, limited(ok, 60, minute, 59)))
	s.expectIn("value_to_metric", "route=api/v2,method=GET shares api/*", one(kv("route", "api/v2"), kv("method", "GET")), response(ok, limited(ok, 60, minute, 58)))
	s.expectIn("detailed_metric", "service=svc/user,endpoint=get (share_threshold + detailed_metric): 80/minute", one(kv("service", "svc/user"), kv("endpoint", "get")), response(ok, limited(ok, 80, minute, 79)))
	s.expect("nested=parent,files=nested/file1.txt: 200/minute", one(kv("nested", "parent"), kv("files", "nested/file1.txt")), response(ok, limited(ok, 200, minute, 199)))
	s.expect("files=top/file1.txt,files=nested/file1.txt: 300/minute", one(kv("files", "top/file1.txt"), kv("files", "nested/file1.txt")), response(ok, limited(ok, 300, minute, 299)))
	s.expect("files=top/file2.txt,files=nested/file2.txt shares both patterns", one(kv("files", "top/file2.txt"), kv("files", "nested/file2.txt")), response(ok, limited(ok, 300, minute, 298)))
	s.expect("path=path/foo,file=file/doc1,type=pdf: 120/minute", one(kv("path", "path/foo"), kv("file", "file/doc1"), kv("type", "pdf")), response(ok, limited(ok, 120, minute, 119)))
	s.expect("path=path/bar,file=file/doc1,type=pdf shares path/*", one(kv("path", "path/bar"), kv("file", "file/doc1"), kv("type", "pdf")), response(ok, limited(ok, 120, minute, 118)))
	s.expect("path=path/bar,file=file/doc2,type=pdf: file/* without share_threshold counts apart", one(kv("path", "path/bar"), kv("file", "file/doc2"), kv("type", "pdf")), response(ok, limited(ok, 120, minute, 119)))
	s.expect("user=user/alice,resource=res/file1,action=read: 150/minute", one(kv("user", "user/alice"), kv("resource", "res/file1"), kv("action", "read")), response(ok, limited(ok, 150, minute, 149)))
	s.expect("file=test1: the exact value wins over test* (50/minute)", one(kv("file", "test1")), response(ok, limited(ok, 50, minute, 49)))
	for i, value := range []string{"test2", "test23", "test123"} {
		s.expect(fmt.Sprintf("file=%s shares test* (100/minute)", value), one(kv("file", value)), response(ok, limited(ok, 100, minute, uint32(99-i))))
	}
	s.close()

	// TestDuplicateDomain fails on the duplicate, so its second file alone, a domain with a
	// bare `descriptors:` (null), is a valid file upstream: the domain exists without rules,
	// which an override shows (overrides apply on known domains only).
	s, err = open("config_test.go TestDuplicateDomain (duplicate_domain.yaml alone)", "config files", "duplicate_domain.yaml")
	if err != nil {
		return err
	}
	s.expect("test-domain with null descriptors: no rule", one(kv("key1", "value1")), response(ok, noRule()))
	s.expect("test-domain is known: an override applies",
		withOverride(one(kv("key1", "value1")), 0, 5, typev3.RateLimitUnit_MINUTE),
		response(ok, limited(ok, 5, minute, 4)))
	s.close()

	runRejectedConfigs(r)
	return nil
}

// exhaust sends limit requests, each within the limit, then one more, which a shadow rule
// answers OK (remaining 0) and any other OVER_LIMIT; the step passes only if all agree.
func (s *scenario) exhaust(name string, req *rlsv3.RateLimitRequest, limit uint32, unit rlsv3.RateLimitResponse_RateLimit_Unit, shadow bool) {
	if unit == second {
		avoidBoundary(time.Second, 300*time.Millisecond)
	}
	s.step(name, req, func(got *rlsv3.RateLimitResponse) error {
		// got is the first answer; the rest follow here.
		for i := uint32(1); ; i++ {
			want := response(ok, limited(ok, limit, unit, limit-i))
			if i == limit+1 {
				if shadow {
					want = response(ok, limited(ok, limit, unit, 0))
				} else {
					want = response(overLimit, limited(overLimit, limit, unit, 0))
				}
			}
			if err := equalAsUpstream(want, got); err != nil {
				return fmt.Errorf("request %d of %d: %w", i, limit+1, err)
			}
			if i == limit+1 {
				return nil
			}
			var err error
			if got, err = s.baton.shouldRateLimit(req); err != nil {
				return err
			}
		}
	})
}

// runRejectedConfigs replays the config_test.go cases where upstream refuses a file: baton
// must refuse it too (upstream keeps no configuration and answers every request with an
// error; baton may instead refuse to start).
func runRejectedConfigs(r *run) {
	cases := []struct {
		test  string
		files []string
	}{
		{"TestEmptyDomain", []string{"empty_domain.yaml"}},
		{"TestDuplicateDomain", []string{"basic_config.yaml", "duplicate_domain.yaml"}},
		{"TestEmptyKey", []string{"empty_key.yaml"}},
		{"TestDuplicateKey", []string{"duplicate_key.yaml"}},
		{"TestBadLimitUnit", []string{"bad_limit_unit.yaml"}},
		{"TestReplacesSelf", []string{"replaces_self.yaml"}},
		{"TestReplacesEmpty", []string{"replaces_empty.yaml"}},
		{"TestBadYaml", []string{"bad_yaml.yaml"}},
		{"TestMisspelledKey", []string{"misspelled_key.yaml"}},
		{"TestMisspelledKey (2)", []string{"misspelled_key2.yaml"}},
		{"TestNonStringKey", []string{"non_string_key.yaml"}},
		{"TestNonMapList", []string{"non_map_list.yaml"}},
		{"TestUnlimitedWithRateLimitUnit", []string{"unlimited_with_unit.yaml"}},
	}
	probe := request("test-domain", [][][2]string{{{"key1", "value1"}}}, 1)
	for _, c := range cases {
		s := &scenario{run: r, name: "config_test.go " + c.test, feature: "rejected configs"}
		var paths []string
		for _, f := range c.files {
			paths = append(paths, configFile(r.env.upstream, f))
		}
		what := fmt.Sprintf("start baton on %v", c.files)
		dir, err := r.env.configDir(c.test, paths...)
		if err != nil {
			s.check("file refused", what, err.Error())
			continue
		}
		refused, how := r.env.refusesToStart(c.test, batonOptions{configDir: dir}, probe)
		failure := ""
		if !refused {
			failure = "upstream refuses this file; baton " + how
		}
		s.check("file refused", what, failure)
	}
}
