package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// upstreamModule is envoyproxy/ratelimit as the Go module proxy serves it. The project
// tags no Go-module versions, so the newest is a pseudo-version of its main branch; bump
// it deliberately, since its test cases are what this suite replays.
const upstreamModule = "github.com/envoyproxy/ratelimit"

const upstreamVersion = "v1.4.1-0.20260122083618-3fb702589d36"

// downloadUpstream fetches the module into the module cache (a no-op when it is there)
// and returns the directory holding its files, read-only, as the proxy served them.
func downloadUpstream() (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", upstreamModule+"@"+upstreamVersion)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", upstreamModule, upstreamVersion, err)
	}
	var info struct {
		Dir   string
		Error string
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go mod download output: %w", err)
	}
	if info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", upstreamModule, upstreamVersion, info.Error)
	}
	return info.Dir, nil
}

// buildReference compiles upstream's own server (src/service_cmd) from the module cache
// into dir, so the harness's expectations can be checked against the implementation they
// were taken from.
func buildReference(upstream, dir string) (string, error) {
	binary := filepath.Join(dir, "ratelimit-upstream")
	cmd := exec.Command("go", "build", "-o", binary, "./src/service_cmd")
	cmd.Dir = upstream
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building upstream's server: %w", err)
	}
	return binary, nil
}
