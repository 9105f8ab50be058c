package resources_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestTimings(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name, spec string
		want       resources.Timings
	}{
		{"generic", ``, resources.Timings{PreStopWait: 5 * s, GracePeriod: 80 * s}},
		{"generic, own wait", `
  drain: {preStopWait: 0s, timeout: 10s}`, resources.Timings{PreStopWait: 0, GracePeriod: 25 * s}},
		{"aws-nlb: the delay follows the grace period", `
  service: {loadBalancer: {provider: aws-nlb}}`,
			resources.Timings{PreStopWait: 130 * s, GracePeriod: 205 * s, DeregistrationDelay: 205 * s, IdleTimeout: 350 * s}},
		{"aws-nlb, explicit delay", `
  drain: {preStopWait: 150s, timeout: 30s, deregistrationDelay: 300s}
  service: {loadBalancer: {provider: aws-nlb}}`,
			resources.Timings{PreStopWait: 150 * s, GracePeriod: 195 * s, DeregistrationDelay: 300 * s, IdleTimeout: 350 * s}},
		{"aws-nlb, fractions round up", `
  drain: {preStopWait: 120.5s, timeout: 1500ms}
  service: {loadBalancer: {provider: aws-nlb}}`,
			resources.Timings{PreStopWait: 120500 * time.Millisecond, GracePeriod: 137 * s, DeregistrationDelay: 137 * s, IdleTimeout: 350 * s}},
		{"gke", `
  service: {loadBalancer: {provider: gke}}`, resources.Timings{PreStopWait: 30 * s, GracePeriod: 105 * s, IdleTimeout: 10 * time.Minute}},
		{"gke ignores a deregistration delay", `
  drain: {deregistrationDelay: 10s}
  service: {loadBalancer: {provider: gke}}`, resources.Timings{PreStopWait: 30 * s, GracePeriod: 105 * s, IdleTimeout: 10 * time.Minute}},
		{"azure, default heartbeat: 4 minutes", `
  service: {loadBalancer: {provider: azure}}`, resources.Timings{PreStopWait: 20 * s, GracePeriod: 95 * s, IdleTimeout: 4 * time.Minute}},
		{"azure, long heartbeat timeout rounds up to minutes", `
  heartbeat: {interval: 5m, timeout: 12m30s}
  service: {loadBalancer: {provider: azure}}`, resources.Timings{PreStopWait: 20 * s, GracePeriod: 95 * s, IdleTimeout: 13 * time.Minute}},
		{"azure caps at 100 minutes", `
  heartbeat: {interval: 90m, timeout: 3h}
  service: {loadBalancer: {provider: azure}}`, resources.Timings{PreStopWait: 20 * s, GracePeriod: 95 * s, IdleTimeout: 100 * time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := resources.TimingsFor(defaulted(t, minimal+tc.spec)); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// The Deployment and the Service take their timings from TimingsFor.
func TestTimingsReachTheObjects(t *testing.T) {
	sc := defaulted(t, minimal+`
  drain: {preStopWait: 140s, timeout: 45s}
  service: {loadBalancer: {provider: aws-nlb}}`)
	d := resources.Deployment(sc, "img", "")
	if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 200 {
		t.Errorf("grace %d, want 140+45+15", g)
	}
	cmd := container(t, d).Lifecycle.PreStop.Exec.Command
	if cmd[len(cmd)-1] != "--delay=2m20s" {
		t.Errorf("preStop %v, want --delay=2m20s", cmd)
	}
	if a := resources.Service(sc, "").Annotations[resources.AnnotationAWSTargetGroup]; !strings.HasPrefix(a, "deregistration_delay.timeout_seconds=200,") {
		t.Errorf("target group attributes %q, want the grace period as delay", a)
	}
}

// The CRD's CEL rules repeat the default waits (CEL cannot call Go): they
// must say what DefaultPreStopWait says.
func TestCELDefaultWaitsMatch(t *testing.T) {
	raw, err := os.ReadFile(crdFile)
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, r := range crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].XValidations {
		rules = append(rules, r.Rule)
	}
	all := strings.Join(rules, "\n")
	for _, p := range []v1alpha1.LoadBalancerProvider{v1alpha1.AWSNLB, v1alpha1.GKE, v1alpha1.Azure} {
		want := fmt.Sprintf("self.service.loadBalancer.provider == '%s' ? duration('%ds')", p, resources.Seconds(resources.DefaultPreStopWait(p)))
		if n := strings.Count(all, want); n != 2 {
			t.Errorf("%d rules contain %q, want 2 (grace period, deregistration delay)", n, want)
		}
	}
	want := fmt.Sprintf("!has(self.service.loadBalancer) ? duration('%ds')", resources.Seconds(resources.PreStopWaitGeneric))
	if n := strings.Count(all, want); n != 2 {
		t.Errorf("%d rules contain %q, want 2", n, want)
	}
}
