package main

import "fmt"

// atomicDifferences lists, by step name, where baton's default atomic evaluation answers
// otherwise than upstream's default counting, and why (docs/envoy.md). In atomic mode these
// steps must differ — one that passes means the list is stale and fails the run; with
// --envoy-counting upstream they must all pass.
var atomicDifferences = map[string]string{}

func init() {
	// Upstream (redis/fixed_cache_impl.go DoLimit, STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT
	// unset) increments every descriptor's counter, so key2 keeps counting while key3
	// denies the request; atomic evaluation consumes nothing from a denied request and
	// key2 stays at 10 remaining — what upstream's own ...stopCacheKeyIncrement... subtests
	// expect.
	for _, variant := range []string{"TestBasicConfig/WithoutPerSecondRedis", "TestBasicConfig/WithoutPerSecondRedisWithLocalCache"} {
		for i := 11; i <= 15; i++ {
			atomicDifferences[fmt.Sprintf("%s / another key2+key3 #%d", variant, i)] =
				"upstream counts key2 although key3 denies the request; atomic evaluation does not"
		}
	}
	// The over-limit request (hits_addend 7 on 6 of 10) is counted upstream (13 of 10), not
	// under atomic evaluation (still 6 of 10), so later requests see different counters.
	atomicDifferences["fixed_cache_impl_test.go hits_addend / after the over-limit request, a look (descriptor hits_addend 0)"] =
		"upstream counted the denied hits_addend 7 (13 of 10: over limit); atomic evaluation did not (6 of 10)"
	atomicDifferences["fixed_cache_impl_test.go hits_addend / after hits_addend 20 on a limit of 10, a look (descriptor hits_addend 0)"] =
		"upstream counted the denied 20 hits (20 of 10); atomic evaluation counted none (0 of 10)"
	atomicDifferences["fixed_cache_impl_test.go hits_addend / after the over-limit request, hits_addend 4"] =
		"upstream counted the denied hits_addend 7 (13 + 4 of 10); atomic evaluation did not (6 + 4 of 10 is within the limit)"
}
