package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"gopkg.in/yaml.v3"
)

// Upstream's own end-to-end suite: integration-test/run-all.sh runs every script of
// integration-test/scripts, in order, with curl against a real Envoy
// (examples/envoy/proxy.yaml) whose rate limit filter asks ratelimit, configured by
// examples/ratelimit/config/*.yaml. Here Envoy's part is played by the harness: each curl
// becomes the ShouldRateLimit request that proxy.yaml's route would make of its headers,
// and each assertion of the script becomes a check of the answer (429 = OVER_LIMIT).

// envoyRoute is one route of proxy.yaml: a path prefix and its rate_limits actions.
type envoyRoute struct {
	prefix  string
	cluster string
	// limits holds, per rate_limits entry, its actions in order.
	limits [][]envoyAction
}

type envoyAction struct {
	// kind is request_headers, source_cluster or destination_cluster.
	kind          string
	headerName    string
	descriptorKey string
}

// envoyFilter is what the rate limit filter of proxy.yaml sends.
type envoyFilter struct {
	domain        string
	serviceNode   string
	routes        []envoyRoute
	headersFormat string
}

func loadEnvoyFilter(path string) (*envoyFilter, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	// --service-cluster proxy, as docker-compose-integration-test.yml starts the proxy.
	filter := &envoyFilter{serviceNode: "proxy"}
	var walk func(node any)
	walk = func(node any) {
		switch n := node.(type) {
		case map[string]any:
			if n["name"] == "envoy.filters.http.ratelimit" {
				if config, ok := n["typed_config"].(map[string]any); ok {
					filter.domain, _ = config["domain"].(string)
					filter.headersFormat, _ = config["enable_x_ratelimit_headers"].(string)
				}
			}
			if match, ok := n["match"].(map[string]any); ok {
				if route, ok := n["route"].(map[string]any); ok {
					filter.routes = append(filter.routes, parseRoute(match, route))
				}
			}
			for _, v := range n {
				walk(v)
			}
		case []any:
			for _, v := range n {
				walk(v)
			}
		}
	}
	walk(doc)
	if filter.domain == "" || len(filter.routes) == 0 {
		return nil, errors.New(path + ": no ratelimit filter domain or no routes")
	}
	// Routes are found in the order of their one list (walk keeps list order), which is
	// the order Envoy matches them in.
	return filter, nil
}

func parseRoute(match, route map[string]any) envoyRoute {
	r := envoyRoute{}
	r.prefix, _ = match["prefix"].(string)
	r.cluster, _ = route["cluster"].(string)
	limits, _ := route["rate_limits"].([]any)
	for _, l := range limits {
		entry, _ := l.(map[string]any)
		actions, _ := entry["actions"].([]any)
		var parsed []envoyAction
		for _, a := range actions {
			action, _ := a.(map[string]any)
			switch {
			case action["request_headers"] != nil:
				h, _ := action["request_headers"].(map[string]any)
				name, _ := h["header_name"].(string)
				key, _ := h["descriptor_key"].(string)
				parsed = append(parsed, envoyAction{kind: "request_headers", headerName: strings.ToLower(name), descriptorKey: key})
			case action["source_cluster"] != nil || hasKey(action, "source_cluster"):
				parsed = append(parsed, envoyAction{kind: "source_cluster"})
			case action["destination_cluster"] != nil || hasKey(action, "destination_cluster"):
				parsed = append(parsed, envoyAction{kind: "destination_cluster"})
			default:
				parsed = append(parsed, envoyAction{kind: "unsupported"})
			}
		}
		r.limits = append(r.limits, parsed)
	}
	return r
}

func hasKey(m map[string]any, key string) bool {
	_, ok := m[key]
	return ok
}

// descriptorsFor builds what Envoy sends for a request to path with headers: one
// descriptor per rate_limits entry whose actions all produce an entry (a request_headers
// action whose header is absent drops its whole descriptor). nil means Envoy would not
// call the rate limit service at all.
func (f *envoyFilter) descriptorsFor(path string, headers map[string]string) ([][][2]string, error) {
	for _, route := range f.routes {
		if !strings.HasPrefix(path, route.prefix) {
			continue
		}
		var descriptors [][][2]string
	limits:
		for _, actions := range route.limits {
			var entries [][2]string
			for _, action := range actions {
				switch action.kind {
				case "request_headers":
					value, ok := headers[action.headerName]
					if !ok {
						continue limits
					}
					entries = append(entries, [2]string{action.descriptorKey, value})
				case "source_cluster":
					entries = append(entries, [2]string{"source_cluster", f.serviceNode})
				case "destination_cluster":
					entries = append(entries, [2]string{"destination_cluster", route.cluster})
				default:
					return nil, fmt.Errorf("route %s: an action this harness does not play", route.prefix)
				}
			}
			descriptors = append(descriptors, entries)
		}
		return descriptors, nil
	}
	return nil, fmt.Errorf("no route of proxy.yaml matches %s", path)
}

// scriptStep is one curl of a script and what the script asserts about it.
type scriptStep struct {
	line    int
	path    string
	headers map[string]string
	// expect is "ok", "limited" or "" (the script asserts nothing about this curl).
	expect string
	// tooMany marks `curl -i ... | grep "Too Many Requests"`: a following `$? -ne 0`
	// check then demands a 429.
	tooMany bool
}

var (
	curlLine   = regexp.MustCompile(`curl\s.*http://envoy-proxy:\d+(/[^\s)"']*)`)
	headerFlag = regexp.MustCompile(`-H\s+"([^":]+):\s*([^"]*)"`)
)

// parseScript reads a script's curls and assertions, in the script's own order.
func parseScript(path string) ([]scriptStep, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var steps []scriptStep
	last := -1
	for i, line := range strings.Split(string(data), "\n") {
		text := strings.TrimSpace(line)
		if strings.HasPrefix(text, "#") || text == "" {
			continue
		}
		if m := curlLine.FindStringSubmatch(text); m != nil {
			step := scriptStep{line: i + 1, path: m[1], headers: map[string]string{}}
			for _, h := range headerFlag.FindAllStringSubmatch(text, -1) {
				step.headers[strings.ToLower(strings.TrimSpace(h[1]))] = strings.TrimSpace(h[2])
			}
			step.tooMany = strings.Contains(text, "Too Many Requests")
			// trigger-shadow-mode-key.sh also greps x-ratelimit-remaining, a header Envoy
			// computes from the statuses, and compares it to "0" with curl's CR still
			// attached, so that check holds whatever the answer: it sets no expectation.
			steps = append(steps, step)
			last = len(steps) - 1
			continue
		}
		if last < 0 {
			continue
		}
		switch {
		case text == "assert_ok":
			steps[last].expect = "ok"
		case text == "assert_limited":
			steps[last].expect = "limited"
		case strings.HasPrefix(text, "if [ $? -ne 0 ]"):
			if steps[last].tooMany {
				steps[last].expect = "limited"
			} else {
				steps[last].expect = "ok"
			}
		case strings.HasPrefix(text, "if [ $? -eq 0 ]"):
			steps[last].expect = "limited"
		}
	}
	return steps, nil
}

func runEnvoyScripts(r *run) error {
	up := r.env.upstream
	filter, err := loadEnvoyFilter(filepath.Join(up, "examples", "envoy", "proxy.yaml"))
	if err != nil {
		return err
	}
	configs, err := filepath.Glob(filepath.Join(up, "examples", "ratelimit", "config", "*.yaml"))
	if err != nil {
		return err
	}
	scripts, err := filepath.Glob(filepath.Join(up, "integration-test", "scripts", "*.sh"))
	if err != nil || len(scripts) == 0 {
		return fmt.Errorf("no scripts under integration-test/scripts: %v", err)
	}
	sort.Strings(scripts) // run-all.sh's glob order
	dir, err := r.env.configDir("examples", configs...)
	if err != nil {
		return err
	}
	// One ratelimit serves every script in turn, as run-all.sh runs them.
	s := r.scenario("integration-test", "envoy end to end", batonOptions{configDir: dir})
	defer s.close()
	for _, script := range scripts {
		steps, err := parseScript(script)
		if err != nil {
			return err
		}
		name := filepath.Base(script)
		for _, step := range steps {
			descriptors, err := filter.descriptorsFor(step.path, step.headers)
			stepName := fmt.Sprintf("%s:%d %s %s", name, step.line, step.path, formatHeaders(step.headers))
			if err != nil {
				s.check(stepName, step.path, err.Error())
				continue
			}
			if len(descriptors) == 0 {
				continue // Envoy would not ask; nothing to check
			}
			req := request(filter.domain, descriptors, 0)
			feature := featureOfScript(name)
			if step.expect == "" {
				// The script sends it for its effect on the counters only.
				if s.baton != nil {
					if _, err := s.baton.shouldRateLimit(req); err != nil {
						s.check(stepName, formatRequest(req), "error: "+err.Error())
					}
				}
				continue
			}
			want := ok
			if step.expect == "limited" {
				want = overLimit
			}
			s.stepIn(feature, stepName, req, func(got *rlsv3.RateLimitResponse) error {
				if got.OverallCode != want {
					return fmt.Errorf("the script expects %s (%s), got %s", step.expect, map[bool]string{true: "HTTP 429", false: "HTTP 200"}[want == overLimit], formatResponse(got))
				}
				return nil
			})
		}
	}
	return nil
}

func featureOfScript(name string) string {
	switch {
	case strings.Contains(name, "replaces"):
		return "replaces"
	case strings.Contains(name, "shadow"):
		return "shadow mode"
	case strings.Contains(name, "value-included"):
		return "detailed_metric"
	default:
		return "envoy end to end"
	}
}

func formatHeaders(headers map[string]string) string {
	keys := make([]string, 0, len(headers))
	for k := range headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+headers[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}
