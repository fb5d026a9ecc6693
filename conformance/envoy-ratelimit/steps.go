package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	commonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	ok        = rlsv3.RateLimitResponse_OK
	overLimit = rlsv3.RateLimitResponse_OVER_LIMIT
	second    = rlsv3.RateLimitResponse_RateLimit_SECOND
	minute    = rlsv3.RateLimitResponse_RateLimit_MINUTE
	hour      = rlsv3.RateLimitResponse_RateLimit_HOUR
	day       = rlsv3.RateLimitResponse_RateLimit_DAY
	week      = rlsv3.RateLimitResponse_RateLimit_WEEK
	month     = rlsv3.RateLimitResponse_RateLimit_MONTH
	year      = rlsv3.RateLimitResponse_RateLimit_YEAR
)

// request builds a RateLimitRequest as upstream's test/common.NewRateLimitRequest does:
// one descriptor per entry list, the request's hits_addend as given.
func request(domain string, descriptors [][][2]string, hitsAddend uint32) *rlsv3.RateLimitRequest {
	r := &rlsv3.RateLimitRequest{Domain: domain, HitsAddend: hitsAddend}
	for _, entries := range descriptors {
		d := &commonv3.RateLimitDescriptor{}
		for _, entry := range entries {
			d.Entries = append(d.Entries, &commonv3.RateLimitDescriptor_Entry{Key: entry[0], Value: entry[1]})
		}
		r.Descriptors = append(r.Descriptors, d)
	}
	return r
}

// withDescriptorHits sets each descriptor's own hits_addend (test/common's
// NewRateLimitRequestWithPerDescriptorHitsAddend).
func withDescriptorHits(r *rlsv3.RateLimitRequest, hits ...uint64) *rlsv3.RateLimitRequest {
	for i, h := range hits {
		r.Descriptors[i].HitsAddend = wrapperspb.UInt64(h)
	}
	return r
}

// withOverride sets descriptor i's limit override, as Envoy sends one from a route's
// `limit` action.
func withOverride(r *rlsv3.RateLimitRequest, i int, requestsPerUnit uint32, unit typev3.RateLimitUnit) *rlsv3.RateLimitRequest {
	r.Descriptors[i].Limit = &commonv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: requestsPerUnit, Unit: unit}
	return r
}

// limited is the status upstream's integration tests build with newDescriptorStatus: the
// duration is taken from the answer itself (only its presence and whole seconds count).
func limited(code rlsv3.RateLimitResponse_Code, requestsPerUnit uint32, unit rlsv3.RateLimitResponse_RateLimit_Unit, remaining uint32) *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{
		Code:               code,
		CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: requestsPerUnit, Unit: unit},
		LimitRemaining:     remaining,
		DurationUntilReset: &durationpb.Duration{},
	}
}

// named is limited with the rule's name, which upstream copies into current_limit.
func named(name string, status *rlsv3.RateLimitResponse_DescriptorStatus) *rlsv3.RateLimitResponse_DescriptorStatus {
	status.CurrentLimit.Name = name
	return status
}

// noRule is the status of a descriptor no rule matches: OK, no limit, remaining 0.
func noRule() *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{Code: ok}
}

// unlimited is the status of an `unlimited: true` rule (service.shouldRateLimitWorker).
func unlimited() *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{Code: ok, LimitRemaining: math.MaxUint32}
}

// quotaOver is a quota_mode rule past its limit: OK, the limit, no duration.
func quotaOver(requestsPerUnit uint32, unit rlsv3.RateLimitResponse_RateLimit_Unit) *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{
		Code:         ok,
		CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: requestsPerUnit, Unit: unit},
	}
}

func response(code rlsv3.RateLimitResponse_Code, statuses ...*rlsv3.RateLimitResponse_DescriptorStatus) *rlsv3.RateLimitResponse {
	return &rlsv3.RateLimitResponse{OverallCode: code, Statuses: statuses}
}

func withHeaders(r *rlsv3.RateLimitResponse, pairs ...string) *rlsv3.RateLimitResponse {
	for i := 0; i+1 < len(pairs); i += 2 {
		r.ResponseHeadersToAdd = append(r.ResponseHeadersToAdd, &corev3.HeaderValue{Key: pairs[i], Value: pairs[i+1]})
	}
	return r
}

// equalAsUpstream compares as upstream's common.AssertProtoEqual does, after copying the
// answer's duration_until_reset seconds into the expected statuses that carry one, as its
// tests do (durRemaining := response.GetStatuses()[i].DurationUntilReset).
func equalAsUpstream(want, got *rlsv3.RateLimitResponse) error {
	want = proto.Clone(want).(*rlsv3.RateLimitResponse)
	for i, status := range want.Statuses {
		if status.DurationUntilReset != nil && i < len(got.GetStatuses()) {
			status.DurationUntilReset = &durationpb.Duration{Seconds: got.Statuses[i].GetDurationUntilReset().GetSeconds()}
		}
	}
	// Upstream's headers carry a clock value for RateLimit-Reset; compare it the same way.
	for i, header := range want.ResponseHeadersToAdd {
		if header.Value == "*" && i < len(got.GetResponseHeadersToAdd()) {
			header.Value = got.ResponseHeadersToAdd[i].GetValue()
		}
	}
	if proto.Equal(want, got) {
		return nil
	}
	return fmt.Errorf("want %s, got %s", formatResponse(want), formatResponse(got))
}

// statusAt is the i-th status, or nil when the answer has fewer.
func statusAt(r *rlsv3.RateLimitResponse, i int) *rlsv3.RateLimitResponse_DescriptorStatus {
	if i < len(r.GetStatuses()) {
		return r.GetStatuses()[i]
	}
	return nil
}

// formatResponse prints a response compactly, in the order Envoy reads it.
func formatResponse(r *rlsv3.RateLimitResponse) string {
	if r == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString(r.OverallCode.String())
	b.WriteString(" [")
	for i, s := range r.Statuses {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s.Code.String())
		if l := s.CurrentLimit; l != nil {
			fmt.Fprintf(&b, " %d/%s", l.RequestsPerUnit, strings.ToLower(l.Unit.String()))
			if l.Name != "" {
				fmt.Fprintf(&b, " name=%q", l.Name)
			}
		} else {
			b.WriteString(" no-limit")
		}
		fmt.Fprintf(&b, " remaining=%d", s.LimitRemaining)
		if d := s.DurationUntilReset; d != nil {
			if d.Nanos != 0 {
				fmt.Fprintf(&b, " reset=%ds%dns", d.Seconds, d.Nanos)
			} else {
				fmt.Fprintf(&b, " reset=%ds", d.Seconds)
			}
		}
	}
	b.WriteString("]")
	if len(r.ResponseHeadersToAdd) > 0 {
		var headers []string
		for _, h := range r.ResponseHeadersToAdd {
			headers = append(headers, h.Key+": "+h.Value)
		}
		fmt.Fprintf(&b, " headers{%s}", strings.Join(headers, ", "))
	}
	if len(r.RequestHeadersToAdd) > 0 {
		fmt.Fprintf(&b, " request-headers=%d", len(r.RequestHeadersToAdd))
	}
	return b.String()
}

// formatRequest prints a request compactly.
func formatRequest(r *rlsv3.RateLimitRequest) string {
	var descriptors []string
	for _, d := range r.Descriptors {
		var entries []string
		for _, e := range d.Entries {
			entries = append(entries, e.Key+"="+e.Value)
		}
		text := "(" + strings.Join(entries, ", ") + ")"
		if d.HitsAddend != nil {
			text += fmt.Sprintf(" hits=%d", d.HitsAddend.Value)
		}
		if d.Limit != nil {
			text += fmt.Sprintf(" override=%d/%s", d.Limit.RequestsPerUnit, strings.ToLower(d.Limit.Unit.String()))
		}
		descriptors = append(descriptors, text)
	}
	text := fmt.Sprintf("%s %s", r.Domain, strings.Join(descriptors, " "))
	if r.HitsAddend > 1 {
		text += fmt.Sprintf(" hits_addend=%d", r.HitsAddend)
	}
	return text
}

// result is one step's outcome.
type result struct {
	name     string
	feature  string
	request  string
	failure  string // empty when it passed
	expected string // why a failure is a documented atomic-mode difference
	// broken marks a step whose baton never started: it counts as failed, never as an
	// expected difference, and is printed once per scenario.
	broken   bool
	scenario string
}

// run collects the steps of every scenario.
type run struct {
	env     *env
	results []result
	verbose bool
}

// scenario is one group of steps against one baton.
type scenario struct {
	run     *run
	name    string
	feature string
	baton   *baton
	// broken is set when the scenario's baton did not start: its steps fail with it.
	broken string
}

// avoidBoundary waits out the end of the current clock period of unit when less than need
// is left of it. Upstream's fixed windows turn over on the clock (now / unit * unit), so a
// sequence of requests that straddles a boundary starts counting afresh halfway; its own
// tests take that chance, these steps do not.
func avoidBoundary(unit, need time.Duration) {
	now := time.Now()
	left := unit - time.Duration(now.UnixNano()%int64(unit))
	if left < need {
		time.Sleep(left + 10*time.Millisecond)
	}
}

func (r *run) scenario(name, feature string, opts batonOptions) *scenario {
	// Every scenario's sequences fit in a few seconds of one clock minute.
	avoidBoundary(time.Minute, 5*time.Second)
	s := &scenario{run: r, name: name, feature: feature}
	b, err := r.env.startBaton(name, opts)
	if err != nil {
		s.broken = "baton did not start: " + err.Error()
		return s
	}
	s.baton = b
	return s
}

func (s *scenario) close() {
	if s.baton != nil {
		s.baton.close()
	}
}

// step sends req and checks the answer with check; the outcome is recorded under
// "<scenario> / <name>".
func (s *scenario) step(name string, req *rlsv3.RateLimitRequest, check func(*rlsv3.RateLimitResponse) error) *rlsv3.RateLimitResponse {
	return s.stepIn(s.feature, name, req, check)
}

func (s *scenario) stepIn(feature, name string, req *rlsv3.RateLimitRequest, check func(*rlsv3.RateLimitResponse) error) *rlsv3.RateLimitResponse {
	res := result{name: s.name + " / " + name, feature: feature, request: formatRequest(req), scenario: s.name}
	var got *rlsv3.RateLimitResponse
	switch {
	case s.broken != "":
		res.failure = s.broken
		res.broken = true
	default:
		var err error
		got, err = s.baton.shouldRateLimit(req)
		if err != nil {
			res.failure = "error: " + err.Error()
		} else if err := check(got); err != nil {
			res.failure = err.Error()
		}
	}
	s.run.record(res)
	return got
}

// expect checks the answer equals want, as upstream's tests compare.
func (s *scenario) expect(name string, req *rlsv3.RateLimitRequest, want *rlsv3.RateLimitResponse) *rlsv3.RateLimitResponse {
	return s.step(name, req, func(got *rlsv3.RateLimitResponse) error { return equalAsUpstream(want, got) })
}

func (s *scenario) expectIn(feature, name string, req *rlsv3.RateLimitRequest, want *rlsv3.RateLimitResponse) *rlsv3.RateLimitResponse {
	return s.stepIn(feature, name, req, func(got *rlsv3.RateLimitResponse) error { return equalAsUpstream(want, got) })
}

// check records a step that is not one request (a reload, a refused file).
func (s *scenario) check(name string, what string, failure string) {
	res := result{name: s.name + " / " + name, feature: s.feature, request: what, failure: failure, scenario: s.name}
	if s.broken != "" {
		res.failure = s.broken
		res.broken = true
	}
	s.run.record(res)
}

func (r *run) record(res result) {
	if res.failure != "" && !res.broken && r.env.mode == "atomic" {
		if why, ok := atomicDifferences[res.name]; ok {
			res.expected = why
		}
	}
	if res.failure == "" && r.env.mode == "atomic" {
		if _, ok := atomicDifferences[res.name]; ok {
			res.failure = "listed as an atomic-mode difference but answered as upstream: update the list"
		}
	}
	r.results = append(r.results, res)
	if r.verbose {
		status := "ok  "
		switch {
		case res.expected != "":
			status = "diff"
		case res.failure != "":
			status = "FAIL"
		}
		fmt.Printf("%s %s\n", status, res.name)
	}
}

// summary prints the failures by feature and returns the counts of each outcome.
func (r *run) summary() (passed, differences, failed int) {
	byFeature := map[string][]result{}
	brokenSteps := map[string]int{}
	var brokenOrder []string
	for _, res := range r.results {
		switch {
		case res.broken:
			failed++
			if brokenSteps[res.scenario] == 0 {
				brokenOrder = append(brokenOrder, res.scenario)
				fmt.Printf("\n  FAIL %s: %s\n", res.scenario, res.failure)
			}
			brokenSteps[res.scenario]++
		case res.failure == "":
			passed++
		case res.expected != "":
			differences++
		default:
			failed++
			byFeature[res.feature] = append(byFeature[res.feature], res)
		}
	}
	for _, scenario := range brokenOrder {
		fmt.Printf("  (%d steps of %s not run: its baton did not start)\n", brokenSteps[scenario], scenario)
	}
	features := make([]string, 0, len(byFeature))
	for f := range byFeature {
		features = append(features, f)
	}
	sort.Strings(features)
	for _, f := range features {
		fmt.Printf("\n  %s: %d failed\n", f, len(byFeature[f]))
		for _, res := range byFeature[f] {
			fmt.Printf("    FAIL %s\n      request: %s\n      %s\n", res.name, res.request, res.failure)
		}
	}
	if differences > 0 {
		fmt.Printf("\n  expected differences (Baton's atomic evaluation, docs/envoy.md):\n")
		for _, res := range r.results {
			if res.expected != "" {
				fmt.Printf("    diff %s: %s\n      request: %s\n      %s\n", res.name, res.expected, res.request, res.failure)
			}
		}
	}
	return passed, differences, failed
}
