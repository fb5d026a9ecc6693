package main

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

// The cases of upstream's test/integration/integration_test.go, against the YAML files of
// its test/integration/runtime/current/ratelimit tree. Upstream's test functions start
// upstream's own server (runner.NewRunner) and read its in-process stats store between
// requests, so they cannot be pointed at another server unchanged; their request and
// response sequences are replayed here step by step, named after upstream's subtests.

func runtimeDir(upstream string) string {
	return filepath.Join(upstream, "test", "integration", "runtime", "current", "ratelimit")
}

func runtimeConfigFiles(upstream string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(runtimeDir(upstream), "config", "*.yaml"))
	if err == nil && len(files) == 0 {
		err = errors.New("no YAML files under " + runtimeDir(upstream))
	}
	return files, err
}

// getCacheKey is upstream's: the local-cache variants use the *_local rules.
func getCacheKey(key string, localCache bool) string {
	if localCache {
		return key + "_local"
	}
	return key
}

func runIntegration(r *run) error {
	files, err := runtimeConfigFiles(r.env.upstream)
	if err != nil {
		return err
	}
	type variant struct {
		name       string
		localCache bool
		// stopIncrement is STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT=true upstream.
		stopIncrement bool
	}
	variants := []variant{
		{"TestBasicConfig/WithoutPerSecondRedis", false, false},
		{"TestBasicConfig/WithoutPerSecondRedisWithLocalCache", true, false},
	}
	// Upstream's STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT variants expect what atomic
	// evaluation answers in these cases; with upstream's (default) counting switched on
	// they are not upstream's default behaviour, so they run in atomic mode only.
	if r.env.mode == "atomic" {
		variants = append(variants,
			variant{"TestBasicConfig/WithoutPerSecondRedisWithstopCacheKeyIncrementWhenOverlimitConfig", false, true},
			variant{"TestBasicConfig/WithoutPerSecondRedisWithLocalCacheAndstopCacheKeyIncrementWhenOverlimitConfig", true, true},
		)
	}
	for _, v := range variants {
		dir, err := r.env.configDir(v.name, files...)
		if err != nil {
			return err
		}
		s := r.scenario(v.name, "basic counting", batonOptions{configDir: dir})
		testBasicBaseConfig(s, v.localCache, v.stopIncrement)
		s.close()
	}

	dir, err := r.env.configDir("reload", files...)
	if err != nil {
		return err
	}
	s := r.scenario("TestBasicReloadConfig/ReloadWithoutWatchRoot", "reload", batonOptions{configDir: dir})
	testConfigReload(s, dir, filepath.Join(runtimeDir(r.env.upstream), "reload.yaml"))
	s.close()

	dir, err = r.env.configDir("share", files...)
	if err != nil {
		return err
	}
	s = r.scenario("TestShareThreshold/WithoutPerSecondRedis", "wildcards + share_threshold", batonOptions{configDir: dir})
	testShareThreshold(s)
	s.close()
	return nil
}

// testBasicBaseConfig replays upstream's function of that name.
func testBasicBaseConfig(s *scenario, localCache, stopIncrement bool) {
	s.expect("foo hello=world (unknown domain)",
		request("foo", [][][2]string{{{getCacheKey("hello", localCache), "world"}}}, 1),
		response(ok, noRule()))

	s.expect("basic key1=foo",
		request("basic", [][][2]string{{{getCacheKey("key1", localCache), "foo"}}}, 1),
		response(ok, limited(ok, 50, second, 49)))

	// "Now come up with a random key, and go over limit for a minute limit."
	random := rand.New(rand.NewSource(time.Now().UnixNano()))
	randomInt := random.Int()
	for i := 0; i < 25; i++ {
		status := ok
		remaining := uint32(20 - (i + 1))
		if i >= 20 {
			status = overLimit
			remaining = 0
		}
		s.expect(fmt.Sprintf("another key2 #%d", i+1),
			request("another", [][][2]string{{{getCacheKey("key2", localCache), strconv.Itoa(randomInt)}}}, 1),
			response(status, limited(status, 20, minute, remaining)))
	}

	// "Limit now against 2 keys in the same domain."
	randomInt = random.Int()
	for i := 0; i < 15; i++ {
		status := ok
		remaining1 := uint32(20 - (i + 1))
		remaining2 := uint32(10 - (i + 1))
		if i >= 10 {
			status = overLimit
			remaining2 = 0
			// Upstream: with STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT the over-limit
			// request stops incrementing key2, so its remaining stays at 10.
			if stopIncrement {
				remaining1 = 10
			}
		}
		s.stepIn(counting(i >= 10, s.feature), fmt.Sprintf("another key2+key3 #%d", i+1),
			request("another", [][][2]string{
				{{getCacheKey("key2", localCache), strconv.Itoa(randomInt)}},
				{{getCacheKey("key3", localCache), strconv.Itoa(randomInt)}},
			}, 1),
			func(got *rlsv3.RateLimitResponse) error {
				return equalAsUpstream(response(status, limited(ok, 20, minute, remaining1), limited(status, 10, hour, remaining2)), got)
			})
	}

	// "Test DurationUntilReset by hitting same key twice." Upstream sleeps 2 s between
	// the two requests; polling until the countdown moves asserts the same without
	// guessing how long it takes (key4 allows 20 a day, the poll sends at most 16).
	durTest := request("another", [][][2]string{{{getCacheKey("key4", localCache), "durTest"}}}, 1)
	first := s.step("another key4=durTest: first", durTest, func(got *rlsv3.RateLimitResponse) error {
		if statusAt(got, 0).GetDurationUntilReset() == nil {
			return errors.New("no duration_until_reset: " + formatResponse(got))
		}
		return nil
	})
	s.step("another key4=durTest: duration_until_reset counts down", durTest, func(got *rlsv3.RateLimitResponse) error {
		if statusAt(first, 0).GetDurationUntilReset() == nil {
			return errors.New("the first answer had no duration_until_reset")
		}
		start := statusAt(first, 0).GetDurationUntilReset().GetSeconds()
		deadline := time.Now().Add(4 * time.Second)
		for {
			now := statusAt(got, 0).GetDurationUntilReset().GetSeconds()
			if now < start {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("duration_until_reset stayed at %d s (first answer %d s) for 4 s", now, start)
			}
			time.Sleep(250 * time.Millisecond)
			var err error
			if got, err = s.baton.shouldRateLimit(durTest); err != nil {
				return err
			}
		}
	})
}

// counting files the over-limit steps of the two-descriptor loop under the counting
// feature, where atomic and upstream evaluation part.
func counting(over bool, feature string) string {
	if over {
		return "counting differences"
	}
	return feature
}

// testConfigReload replays upstream's function of that name: a file added to the watched
// directory is loaded without a restart, and its removal is too.
func testConfigReload(s *scenario, dir, reloadYAML string) {
	s.expect("reload block=foo before reload.yaml exists",
		request("reload", [][][2]string{{{"block", "foo"}}}, 1),
		response(ok, noRule()))

	// A probe that counts nothing (its own hits_addend 0) shows whether the rules of
	// the reload domain are loaded.
	probe := withDescriptorHits(request("reload", [][][2]string{{{"key1", "probe"}}}, 1), 0)
	loaded := func() (bool, error) {
		if s.baton == nil {
			return false, errors.New(s.broken)
		}
		got, err := s.baton.shouldRateLimit(probe)
		if err != nil {
			return false, err
		}
		return statusAt(got, 0).GetCurrentLimit() != nil, nil
	}
	waitFor := func(want bool) string {
		// Upstream waits up to 120 s for its load counter to move; a directory watch
		// reacts in well under 30.
		deadline := time.Now().Add(30 * time.Second)
		for {
			is, err := loaded()
			if err != nil {
				return err.Error()
			}
			if is == want {
				return ""
			}
			if time.Now().After(deadline) {
				return fmt.Sprintf("rules of domain reload still %s after 30 s", map[bool]string{true: "absent", false: "present"}[want])
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	data, err := os.ReadFile(reloadYAML)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "reload.yaml"), data, 0o644)
	}
	if err != nil {
		s.check("reload.yaml copied into the config directory is loaded", "copy reload.yaml", err.Error())
		return
	}
	s.check("reload.yaml copied into the config directory is loaded", "copy runtime/current/ratelimit/reload.yaml into config/", waitFor(true))

	s.expect("reload key1=foo after the reload",
		request("reload", [][][2]string{{{"key1", "foo"}}}, 1),
		response(ok, limited(ok, 50, second, 49)))

	if err := os.Remove(filepath.Join(dir, "reload.yaml")); err != nil {
		s.check("removing reload.yaml reloads the rules", "remove config/reload.yaml", err.Error())
		return
	}
	s.check("removing reload.yaml reloads the rules", "remove config/reload.yaml", waitFor(false))

	// service.SetConfig: a reload that fails (RateLimitConfigError) keeps the rules in
	// force. Upstream's test stops above; this is its code's behaviour, and what a
	// half-written file needs. The old rules must hold for a while (there is no signal of
	// the failed attempt to wait for), then fixing the file loads it.
	another := withDescriptorHits(request("another", [][][2]string{{{"key2", "reload-probe"}}}, 1), 0)
	if s.baton == nil {
		s.check("a file upstream rejects keeps the rules in force", "write config/broken.yaml", "")
		s.check("fixing the rejected file loads it", "rewrite config/broken.yaml", "")
		return
	}
	broken := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(broken, []byte("domain: broken\ndescriptors:\n  - key: k\n    ratelimit:\n      unit: second\n"), 0o644); err != nil {
		s.check("a file upstream rejects keeps the rules in force", "write config/broken.yaml", err.Error())
		return
	}
	failure := ""
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && failure == ""; time.Sleep(100 * time.Millisecond) {
		got, err := s.baton.shouldRateLimit(another)
		switch {
		case err != nil:
			failure = "after broken.yaml appeared: " + err.Error()
		case statusAt(got, 0).GetCurrentLimit() == nil:
			failure = "after broken.yaml (misspelled rate_limit) appeared, domain another lost its rules: " + formatResponse(got)
		}
	}
	s.check("a file upstream rejects keeps the rules in force", "write config/broken.yaml (misspelled key), then ask domain another for 2 s", failure)

	if err := os.WriteFile(broken, data, 0o644); err != nil {
		s.check("fixing the rejected file loads it", "rewrite config/broken.yaml", err.Error())
		return
	}
	s.check("fixing the rejected file loads it", "rewrite config/broken.yaml with reload.yaml's rules", waitFor(true))
}

// testShareThreshold replays upstream's function of that name.
func testShareThreshold(s *scenario) {
	const domain = "share-threshold-test"
	for i := 0; i < 10; i++ {
		s.step(fmt.Sprintf("files=files/a.pdf #%d", i+1),
			request(domain, [][][2]string{{{"files", "files/a.pdf"}}}, 1),
			func(got *rlsv3.RateLimitResponse) error {
				if got.OverallCode != ok && got.OverallCode != overLimit {
					return fmt.Errorf("request %d should be OK or OVER_LIMIT, got %s", i+1, formatResponse(got))
				}
				return nil
			})
	}
	s.expect("files=files/b.csv shares the files/* threshold",
		request(domain, [][][2]string{{{"files", "files/b.csv"}}}, 1),
		response(overLimit, limited(overLimit, 10, hour, 0)))

	base := time.Now().UnixNano()
	random := rand.New(rand.NewSource(base))
	for i := 0; i < 10; i++ {
		unique := fmt.Sprintf("files_no_share/%d-%d", base, random.Int63())
		s.expect(fmt.Sprintf("files_no_share=<unique> #%d has its own threshold", i+1),
			request(domain, [][][2]string{{{"files_no_share", unique}}}, 1),
			response(ok, limited(ok, 10, hour, 9)))
	}
}

// runConfigMapReload replays upstream's reload case in the layout a Kubernetes ConfigMap
// volume has, the usual way rules reach a pod: the files are symlinks into a hidden
// timestamped directory reached through the `..data` symlink, and an update swaps `..data`
// atomically (kubelet's AtomicWriter). Not one of upstream's tests; upstream handles it
// with RUNTIME_IGNOREDOTFILES=true (the reference server runs so), else it loads the
// hidden copies too and rejects the duplicate domains.
func runConfigMapReload(r *run) error {
	files, err := runtimeConfigFiles(r.env.upstream)
	if err != nil {
		return err
	}
	dir, err := r.env.configDir("configmap")
	if err != nil {
		return err
	}
	publish := func(version string, sources []string) error {
		hidden := filepath.Join(dir, version)
		if err := os.Mkdir(hidden, 0o755); err != nil {
			return err
		}
		for _, source := range sources {
			data, err := os.ReadFile(source)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(hidden, filepath.Base(source)), data, 0o644); err != nil {
				return err
			}
		}
		if err := os.Symlink(version, filepath.Join(dir, "..data_tmp")); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			return err
		}
		for _, source := range sources {
			link := filepath.Join(dir, filepath.Base(source))
			if _, err := os.Lstat(link); err == nil {
				continue
			}
			if err := os.Symlink(filepath.Join("..data", filepath.Base(source)), link); err != nil {
				return err
			}
		}
		return nil
	}
	if err := publish("..2026_01_01_00_00_00.000000001", files); err != nil {
		return err
	}
	s := r.scenario("ConfigMap volume", "reload", batonOptions{configDir: dir})
	defer s.close()
	s.expect("rules read through the ..data symlink",
		request("basic", [][][2]string{{{"key1", "configmap"}}}, 1),
		response(ok, limited(ok, 50, second, 49)))
	if s.baton == nil {
		s.check("an atomic ..data swap adding reload.yaml is loaded", "swap ..data", "")
		return nil
	}
	if err := publish("..2026_01_01_00_00_01.000000002", append(files, filepath.Join(runtimeDir(r.env.upstream), "reload.yaml"))); err != nil {
		return err
	}
	probe := withDescriptorHits(request("reload", [][][2]string{{{"key1", "probe"}}}, 1), 0)
	failure := "rules of domain reload still absent after 30 s"
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		got, err := s.baton.shouldRateLimit(probe)
		if err != nil {
			failure = err.Error()
			break
		}
		if statusAt(got, 0).GetCurrentLimit() != nil {
			failure = ""
			break
		}
	}
	s.check("an atomic ..data swap adding reload.yaml is loaded", "publish a new version with reload.yaml, swap ..data, link reload.yaml", failure)
	return nil
}
