// Command envoy-ratelimit replays envoyproxy/ratelimit's own test cases against a real
// baton and a real redis-server, as Envoy sends them (make conformance-envoy-ratelimit).
//
// The module github.com/envoyproxy/ratelimit is downloaded from the Go module proxy at run
// time; its files are read from the module cache, never copied into this repository:
//
//   - test/integration/integration_test.go with its runtime/ YAML tree (integration.go);
//   - test/config/*.yaml with the GetLimit cases of config_test.go (configcases.go);
//   - the behaviours test/service, test/redis and test/limiter check against mocks, and
//     README examples 7, 9 and 11 (servicecases.go);
//   - integration-test/scripts/*.sh, upstream's Envoy end-to-end suite, with
//     examples/envoy/proxy.yaml and examples/ratelimit/config (envoyscripts.go).
//
// -mode atomic (baton's default) expects the steps of atomicDifferences to differ and
// says so by name; -mode upstream starts baton with --envoy-counting upstream, where every
// step must pass. The exit status is 1 when any other step fails.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

func main() {
	os.Exit(exitCode())
}

// exitCode parses the flags and runs the suite: 0 all pass, 1 a step failed, 2 the
// harness could not run.
func exitCode() int {
	batonBin := flag.String("baton", os.Getenv("BATON_BIN"), "baton binary (default $BATON_BIN)")
	redisBin := flag.String("redis-server", "redis-server", "redis-server binary")
	mode := flag.String("mode", "atomic", "atomic (baton's default counting) or upstream (--envoy-counting upstream)")
	reference := flag.String("reference", "", "run upstream's own ratelimit binary (built from the module's src/service_cmd) instead of baton, to check the expectations; use with -mode upstream")
	checkReference := flag.Bool("check-reference", false, "build upstream's own server from the module and run every step against it in upstream mode (checks the harness, not baton)")
	verbose := flag.Bool("v", false, "print every step")
	keep := flag.Bool("keep", false, "keep the work directory (configs and baton logs)")
	flag.Parse()
	if *mode != "atomic" && *mode != "upstream" {
		fmt.Fprintln(os.Stderr, "-mode must be atomic or upstream")
		return 2
	}
	if *checkReference {
		upstream, err := downloadUpstream()
		var dir string
		if err == nil {
			dir, err = os.MkdirTemp("", "envoy-ratelimit-reference-")
		}
		if err == nil {
			defer os.RemoveAll(dir)
			*reference, err = buildReference(upstream, dir)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		*mode = "upstream"
	}
	if *reference != "" && *batonBin == "" {
		*batonBin = *reference
	}
	if *batonBin == "" {
		fmt.Fprintln(os.Stderr, "no baton binary: pass -baton or set BATON_BIN")
		return 2
	}
	return conform(*batonBin, *redisBin, *mode, *reference, *verbose, *keep)
}

func conform(batonBin, redisBin, mode, reference string, verbose, keep bool) int {
	absBaton, err := filepath.Abs(batonBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var help []byte
	if reference != "" {
		if reference, err = filepath.Abs(reference); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		// The reference server reads the YAML directory and counts as upstream does.
		help = []byte("--envoy-config-dir \n--envoy-counting \n--envoy-response-headers \n")
	} else if help, err = exec.Command(absBaton, "--help").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "%s --help: %v\n", absBaton, err)
		return 2
	}
	upstream, err := downloadUpstream()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	workDir, err := os.MkdirTemp("", "envoy-ratelimit-conformance-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if keep {
		fmt.Printf("work directory: %s\n", workDir)
	} else {
		defer os.RemoveAll(workDir)
	}
	redis, err := startRedis(redisBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer redis.stop()

	e := &env{batonBin: absBaton, redis: redis, mode: mode, upstream: upstream, workDir: workDir, help: string(help), reference: reference}
	r := &run{env: e, verbose: verbose}
	server := "baton " + absBaton
	if reference != "" {
		server = "upstream's own server " + reference
	}
	fmt.Printf("envoyproxy/ratelimit %s conformance, mode %s, %s\n", upstreamVersion, mode, server)
	for _, part := range []func(*run) error{runIntegration, runConfigMapReload, runConfigCases, runServiceCases, runEnvoyScripts} {
		if err := part(r); err != nil {
			fmt.Fprintln(os.Stderr, "harness error:", err)
			return 2
		}
	}
	passed, differences, failed := r.summary()
	total := passed + differences + failed
	label := mode
	if reference != "" {
		label = "upstream's own server, checking the expectations"
	}
	fmt.Printf("\nenvoy-ratelimit (%s): %d/%d steps pass", label, passed, total)
	if differences > 0 {
		fmt.Printf(", %d documented atomic-evaluation differences", differences)
	}
	if failed > 0 {
		fmt.Printf(", %d FAIL", failed)
	}
	fmt.Println()
	if failed > 0 {
		return 1
	}
	return 0
}
