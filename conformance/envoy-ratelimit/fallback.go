package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// A baton without --envoy-config-dir reads rules only from its TOML file. To measure such
// a binary anyway, the YAML files are translated into its [envoy] section, keeping what the
// TOML can say and dropping the rest (each dropped key is named in dropped). The run then
// says so: its results measure the engine, not the YAML reader.

type yamlDescriptor struct {
	Key       string `yaml:"key"`
	Value     string `yaml:"value"`
	RateLimit *struct {
		Unit            string `yaml:"unit"`
		RequestsPerUnit *int64 `yaml:"requests_per_unit"`
		Unlimited       bool   `yaml:"unlimited"`
		Name            string `yaml:"name"`
		Replaces        []struct {
			Name string `yaml:"name"`
		} `yaml:"replaces"`
	} `yaml:"rate_limit"`
	Descriptors    []yamlDescriptor `yaml:"descriptors"`
	ShadowMode     bool             `yaml:"shadow_mode"`
	QuotaMode      bool             `yaml:"quota_mode"`
	DetailedMetric bool             `yaml:"detailed_metric"`
	ValueToMetric  bool             `yaml:"value_to_metric"`
	ShareThreshold bool             `yaml:"share_threshold"`
}

type yamlRoot struct {
	Domain      string           `yaml:"domain"`
	Descriptors []yamlDescriptor `yaml:"descriptors"`
}

// translateToTOML writes dir's *.yaml files as one TOML config and returns its path.
func translateToTOML(dir, out string, headers bool) (dropped []string, err error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var b strings.Builder
	b.WriteString("[envoy]\n")
	fmt.Fprintf(&b, "response_headers = %t\n", headers)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		var root yamlRoot
		if err := yaml.Unmarshal(data, &root); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(file), err)
		}
		b.WriteString("\n[[envoy.domains]]\n")
		fmt.Fprintf(&b, "domain = %s\n", strconv.Quote(root.Domain))
		for _, d := range root.Descriptors {
			writeDescriptor(&b, "envoy.domains.descriptors", d, &dropped)
		}
	}
	return dropped, os.WriteFile(out, []byte(b.String()), 0o644)
}

func writeDescriptor(b *strings.Builder, table string, d yamlDescriptor, dropped *[]string) {
	fmt.Fprintf(b, "[[%s]]\n", table)
	fmt.Fprintf(b, "key = %s\n", strconv.Quote(d.Key))
	if d.Value != "" {
		fmt.Fprintf(b, "value = %s\n", strconv.Quote(d.Value))
	}
	if d.ShadowMode {
		b.WriteString("shadow_mode = true\n")
	}
	for flag, set := range map[string]bool{"quota_mode": d.QuotaMode, "detailed_metric": d.DetailedMetric, "value_to_metric": d.ValueToMetric, "share_threshold": d.ShareThreshold} {
		if set {
			*dropped = append(*dropped, flag+" on "+d.Key)
		}
	}
	if d.RateLimit != nil {
		var fields []string
		if d.RateLimit.Unlimited {
			fields = append(fields, "unlimited = true")
		} else {
			fields = append(fields, "unit = "+strconv.Quote(strings.ToLower(d.RateLimit.Unit)))
			// Upstream reads a missing requests_per_unit as 0: a block rule.
			var requestsPerUnit int64
			if d.RateLimit.RequestsPerUnit != nil {
				requestsPerUnit = *d.RateLimit.RequestsPerUnit
			}
			fields = append(fields, fmt.Sprintf("requests_per_unit = %d", requestsPerUnit))
		}
		if d.RateLimit.Name != "" {
			fields = append(fields, "name = "+strconv.Quote(d.RateLimit.Name))
		}
		if len(d.RateLimit.Replaces) > 0 {
			*dropped = append(*dropped, "replaces on "+d.Key)
		}
		fmt.Fprintf(b, "rate_limit = { %s }\n", strings.Join(fields, ", "))
	}
	for _, child := range d.Descriptors {
		writeDescriptor(b, table+".descriptors", child, dropped)
	}
}
