// Command kubecheck decodes rendered Kubernetes manifests (a `kustomize build` stream on
// stdin) strictly into the API server's own Go types, so a misspelt or misplaced field —
// which kubectl would only reject against a live cluster, and kustomize never — fails
// here, on a machine without a cluster. It also checks a few rules the API server enforces
// at admission that a decode alone cannot see.
//
// Usage: kustomize build DIR | kubecheck [-skip-kinds ServiceMonitor,PrometheusRule]
//
// It prints one line per object ("ok Kind/name" or "skip Kind/name") and every problem
// found, and exits 1 if there was any.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// newObject returns an empty typed object for the kinds a Baton deployment uses; any
// other kind must be skipped explicitly, so a new kind cannot pass unchecked by accident.
func newObject(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	}
	return nil
}

func main() {
	skip := flag.String("skip-kinds", "", "comma-separated kinds (CRDs) to accept without a schema")
	flag.Parse()
	skipped := map[string]bool{}
	for _, kind := range strings.Split(*skip, ",") {
		if kind != "" {
			skipped[kind] = true
		}
	}

	docs, err := splitDocuments(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubecheck:", err)
		os.Exit(1)
	}
	failed := false
	for i, doc := range docs {
		var meta metav1.PartialObjectMetadata
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			fmt.Printf("error document %d: %v\n", i, err)
			failed = true
			continue
		}
		id := meta.Kind + "/" + meta.Name
		if skipped[meta.Kind] {
			fmt.Println("skip", id)
			continue
		}
		obj := newObject(meta.APIVersion, meta.Kind)
		if obj == nil {
			fmt.Printf("error %s: no schema for %s %s\n", id, meta.APIVersion, meta.Kind)
			failed = true
			continue
		}
		// UnmarshalStrict refuses unknown and duplicate fields, as `kubectl apply
		// --validate=strict` would.
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			fmt.Printf("error %s: %v\n", id, err)
			failed = true
			continue
		}
		problems := validate(obj)
		for _, problem := range problems {
			fmt.Printf("error %s: %s\n", id, problem)
		}
		if len(problems) > 0 {
			failed = true
			continue
		}
		fmt.Println("ok", id)
	}
	if failed {
		os.Exit(1)
	}
}

// splitDocuments splits a YAML stream on "---" lines, dropping empty documents.
func splitDocuments(r io.Reader) ([][]byte, error) {
	var docs [][]byte
	var current bytes.Buffer
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	flush := func() {
		if len(bytes.TrimSpace(current.Bytes())) > 0 {
			docs = append(docs, append([]byte(nil), current.Bytes()...))
		}
		current.Reset()
	}
	for scanner.Scan() {
		line := scanner.Text()
		if strings.HasPrefix(line, "---") && strings.TrimSpace(strings.TrimLeft(line, "-")) == "" {
			flush()
			continue
		}
		current.WriteString(line)
		current.WriteByte('\n')
	}
	flush()
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, errors.New("no documents on stdin")
	}
	return docs, nil
}

// validate applies admission rules a strict decode cannot see.
func validate(obj any) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if object, ok := obj.(metav1.Object); ok {
		for _, msg := range validation.IsDNS1123Subdomain(object.GetName()) {
			add("metadata.name %q: %s", object.GetName(), msg)
		}
		for key, value := range object.GetLabels() {
			for _, msg := range validation.IsQualifiedName(key) {
				add("label key %q: %s", key, msg)
			}
			for _, msg := range validation.IsValidLabelValue(value) {
				add("label %q value %q: %s", key, value, msg)
			}
		}
	}

	checkWorkload := func(selector *metav1.LabelSelector, template corev1.PodTemplateSpec, claims []corev1.PersistentVolumeClaim) {
		parsed, err := metav1.LabelSelectorAsSelector(selector)
		if err != nil {
			add("spec.selector: %v", err)
		} else if parsed.Empty() || !parsed.Matches(labels.Set(template.Labels)) {
			// The API server rejects a selector that does not match its own template.
			add("spec.selector does not match spec.template.metadata.labels")
		}
		problems = append(problems, validatePod(template.Spec, claims)...)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		checkWorkload(o.Spec.Selector, o.Spec.Template, nil)
	case *appsv1.StatefulSet:
		checkWorkload(o.Spec.Selector, o.Spec.Template, o.Spec.VolumeClaimTemplates)
	case *corev1.Service:
		for _, port := range o.Spec.Ports {
			if port.Name == "" && len(o.Spec.Ports) > 1 {
				add("service port %d needs a name: the service has several", port.Port)
			}
			if port.TargetPort.Type == 1 { // a named target port
				for _, msg := range validation.IsValidPortName(port.TargetPort.StrVal) {
					add("targetPort %q: %s", port.TargetPort.StrVal, msg)
				}
			}
		}
	case *policyv1.PodDisruptionBudget:
		if (o.Spec.MinAvailable == nil) == (o.Spec.MaxUnavailable == nil) {
			add("a PodDisruptionBudget sets exactly one of minAvailable and maxUnavailable")
		}
	}
	return problems
}

// validatePod checks a pod template; claims are a StatefulSet's volumeClaimTemplates,
// which its containers mount like volumes.
func validatePod(spec corev1.PodSpec, claims []corev1.PersistentVolumeClaim) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if len(spec.Containers) == 0 {
		add("a pod needs at least one container")
	}
	volumes := map[string]bool{}
	for _, volume := range spec.Volumes {
		volumes[volume.Name] = true
	}
	for _, claim := range claims {
		volumes[claim.Name] = true
	}
	for _, c := range spec.Containers {
		if c.Image == "" {
			add("container %q has no image", c.Name)
		}
		for _, port := range c.Ports {
			if port.Name != "" {
				for _, msg := range validation.IsValidPortName(port.Name) {
					add("container %q port name %q: %s", c.Name, port.Name, msg)
				}
			}
		}
		for name, probe := range map[string]*corev1.Probe{
			"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe, "startupProbe": c.StartupProbe,
		} {
			if probe == nil {
				continue
			}
			handlers := 0
			for _, set := range []bool{probe.Exec != nil, probe.HTTPGet != nil, probe.TCPSocket != nil, probe.GRPC != nil} {
				if set {
					handlers++
				}
			}
			if handlers != 1 {
				add("container %q %s must have exactly one handler, has %d", c.Name, name, handlers)
			}
			if probe.GRPC != nil && (probe.GRPC.Port < 1 || probe.GRPC.Port > 65535) {
				add("container %q %s grpc.port %d out of range", c.Name, name, probe.GRPC.Port)
			}
		}
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			h := c.Lifecycle.PreStop
			handlers := 0
			for _, set := range []bool{h.Exec != nil, h.HTTPGet != nil, h.TCPSocket != nil, h.Sleep != nil} {
				if set {
					handlers++
				}
			}
			if handlers != 1 {
				add("container %q preStop must have exactly one handler, has %d", c.Name, handlers)
			}
		}
		for _, mount := range c.VolumeMounts {
			if !volumes[mount.Name] {
				add("container %q mounts unknown volume %q", c.Name, mount.Name)
			}
		}
	}
	return problems
}
