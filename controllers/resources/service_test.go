package resources_test

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestServiceDefaults(t *testing.T) {
	sc := defaulted(t, minimal)
	svc := resources.Service(sc, "")
	assertOwned(t, svc.OwnerReferences, sc)
	if svc.Name != "edge" || svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("service %s type %s policy %s", svc.Name, svc.Spec.Type, svc.Spec.ExternalTrafficPolicy)
	}
	if len(svc.Annotations) != 0 {
		t.Errorf("annotations without a preset: %v", svc.Annotations)
	}
	want := []corev1.ServicePort{
		{Name: "tcp", Port: 7000, TargetPort: intstr.FromString("tcp"), Protocol: corev1.ProtocolTCP},
		{Name: "ws", Port: 8080, TargetPort: intstr.FromString("ws"), Protocol: corev1.ProtocolTCP},
	}
	if !reflect.DeepEqual(svc.Spec.Ports, want) {
		t.Errorf("public ports %+v: the admin port must never be public", svc.Spec.Ports)
	}
	if !reflect.DeepEqual(svc.Spec.Selector, resources.SelectorLabels(sc)) {
		t.Errorf("selector %v", svc.Spec.Selector)
	}
}

func TestServiceClusterIPHasNoTrafficPolicy(t *testing.T) {
	sc := defaulted(t, minimal)
	sc.Spec.Service.Type = corev1.ServiceTypeClusterIP
	if p := resources.Service(sc, "").Spec.ExternalTrafficPolicy; p != "" {
		t.Errorf("ClusterIP Service with externalTrafficPolicy %q would be rejected", p)
	}
	sc.Spec.Service.Type = corev1.ServiceTypeNodePort
	sc.Spec.Service.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	if p := resources.Service(sc, "").Spec.ExternalTrafficPolicy; p != corev1.ServiceExternalTrafficPolicyCluster {
		t.Errorf("policy %q, want the user's Cluster", p)
	}
}

func TestServiceAWSNLBPreset(t *testing.T) {
	sc := defaulted(t, minimal+`
  drain: {deregistrationDelay: 300s}
  service:
    loadBalancer: {provider: aws-nlb}
    loadBalancerSourceRanges: [10.0.0.0/8]
    annotations:
      service.beta.kubernetes.io/aws-load-balancer-scheme: internal
      example.com/team: iot
`)
	svc := resources.Service(sc, "")
	want := map[string]string{
		"service.beta.kubernetes.io/aws-load-balancer-type":            "external",
		"service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
		"service.beta.kubernetes.io/aws-load-balancer-scheme":          "internal", // the user's wins
		"service.beta.kubernetes.io/aws-load-balancer-target-group-attributes": "deregistration_delay.timeout_seconds=300," +
			"deregistration_delay.connection_termination.enabled=true,preserve_client_ip.enabled=true",
		"service.beta.kubernetes.io/aws-load-balancer-attributes":                        "load_balancing.cross_zone.enabled=true",
		"service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
		"service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol":              "http",
		"service.beta.kubernetes.io/aws-load-balancer-healthcheck-port":                  "9090",
		"service.beta.kubernetes.io/aws-load-balancer-healthcheck-path":                  "/readyz",
		"example.com/team": "iot",
	}
	if !reflect.DeepEqual(svc.Annotations, want) {
		t.Errorf("annotations\n got %v\nwant %v", svc.Annotations, want)
	}
	if !reflect.DeepEqual(svc.Spec.LoadBalancerSourceRanges, []string{"10.0.0.0/8"}) {
		t.Errorf("source ranges %v", svc.Spec.LoadBalancerSourceRanges)
	}
}

// Without an explicit delay the NLB keeps a pod's connections for its
// whole grace period: preStop wait 130s + drain 60s + 15s.
func TestServiceAWSNLBDelayIsTheGracePeriod(t *testing.T) {
	sc := defaulted(t, minimal+`
  service: {loadBalancer: {provider: aws-nlb}}
`)
	got := resources.Service(sc, "").Annotations[resources.AnnotationAWSTargetGroup]
	if want := "deregistration_delay.timeout_seconds=205,deregistration_delay.connection_termination.enabled=true,preserve_client_ip.enabled=true"; got != want {
		t.Errorf("target group attributes %q, want %q", got, want)
	}
}

func TestServiceGKEPreset(t *testing.T) {
	sc := defaulted(t, minimal+`
  service:
    loadBalancer: {provider: gke}
    annotations: {example.com/team: iot}
`)
	want := map[string]string{"cloud.google.com/l4-rbs": "enabled", "example.com/team": "iot"}
	if got := resources.Service(sc, "").Annotations; !reflect.DeepEqual(got, want) {
		t.Errorf("annotations %v, want %v", got, want)
	}
	if p := resources.Service(sc, "").Spec.ExternalTrafficPolicy; p != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("policy %s: Local keeps client IPs and lets the health check follow readiness", p)
	}
}

func TestServiceAzurePreset(t *testing.T) {
	for _, tc := range []struct{ heartbeat, user, want string }{
		{"", "", "4"}, // 45s heartbeat timeout: Azure's minimum
		{"heartbeat: {interval: 5m, timeout: 15m}", "", "15"}, // above the heartbeat timeout
		{"", "30", "30"}, // the user's wins
	} {
		spec := minimal + "  service: {loadBalancer: {provider: azure}}\n"
		if tc.heartbeat != "" {
			spec += "  " + tc.heartbeat + "\n"
		}
		if tc.user != "" {
			spec = minimal + "  service: {loadBalancer: {provider: azure}, annotations: {service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout: \"" + tc.user + "\"}}\n"
		}
		got := resources.Service(defaulted(t, spec), "").Annotations
		if want := map[string]string{"service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout": tc.want}; !reflect.DeepEqual(got, want) {
			t.Errorf("%q %q: annotations %v, want %v", tc.heartbeat, tc.user, got, want)
		}
	}
}

func TestAdminService(t *testing.T) {
	sc := defaulted(t, minimal)
	svc := resources.AdminService(sc)
	assertOwned(t, svc.OwnerReferences, sc)
	if svc.Name != "edge-admin" || svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("%s %s", svc.Name, svc.Spec.Type)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 9090 || svc.Spec.Ports[0].TargetPort != intstr.FromString("admin") {
		t.Errorf("ports %+v", svc.Spec.Ports)
	}
}

func TestHeadlessService(t *testing.T) {
	sc := defaulted(t, minimal)
	svc := resources.HeadlessService(sc)
	assertOwned(t, svc.OwnerReferences, sc)
	if svc.Name != "edge-headless" || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("%s clusterIP %q", svc.Name, svc.Spec.ClusterIP)
	}
	var names []string
	for _, p := range svc.Spec.Ports {
		names = append(names, p.Name)
	}
	if !reflect.DeepEqual(names, []string{"tcp", "ws", "admin"}) {
		t.Errorf("ports %v", names)
	}
}
