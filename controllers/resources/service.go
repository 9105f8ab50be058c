package resources

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// AWS Load Balancer Controller annotations of the aws-nlb preset.
const (
	awsPrefix                = "service.beta.kubernetes.io/aws-load-balancer-"
	AnnotationAWSType        = awsPrefix + "type"
	AnnotationAWSTargetType  = awsPrefix + "nlb-target-type"
	AnnotationAWSScheme      = awsPrefix + "scheme"
	AnnotationAWSTargetGroup = awsPrefix + "target-group-attributes"
	AnnotationAWSAttributes  = awsPrefix + "attributes"
	AnnotationAWSCrossZone   = awsPrefix + "cross-zone-load-balancing-enabled"
	AnnotationAWSHealthProto = awsPrefix + "healthcheck-protocol"
	AnnotationAWSHealthPort  = awsPrefix + "healthcheck-port"
	AnnotationAWSHealthPath  = awsPrefix + "healthcheck-path"
)

// GKE annotation of the gke preset: a backend service-based external
// passthrough Network Load Balancer, the kind that supports connection
// draining and the health checks kube-proxy answers for
// externalTrafficPolicy Local.
const AnnotationGKEL4RBS = "cloud.google.com/l4-rbs"

// Azure cloud provider annotation of the azure preset. TCP reset on idle is
// always on for a Standard Load Balancer (the annotation that turned it off
// was removed from the cloud provider), so devices see a reset rather than
// a silent drop.
const AnnotationAzureIdleTimeout = "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout"

// Service is the public entry point: the TCP listener, the WebSocket
// listener (port "ws", WebSocket and SSE) and the gRPC one when enabled,
// never the admin API. It selects the pods of revision, or every pod when
// revision is empty (see PublicSelectorLabels).
func Service(sc *v1alpha1.SocketCluster, revision string) *corev1.Service {
	spec := &sc.Spec.Service
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(sc, sc.Name),
		Spec: corev1.ServiceSpec{
			Type:                     spec.Type,
			Selector:                 PublicSelectorLabels(sc, revision),
			Ports:                    devicePortsOfService(sc),
			LoadBalancerSourceRanges: spec.LoadBalancerSourceRanges,
		},
	}
	if spec.Type != corev1.ServiceTypeClusterIP {
		svc.Spec.ExternalTrafficPolicy = spec.ExternalTrafficPolicy
		if svc.Spec.ExternalTrafficPolicy == "" {
			svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
	}
	var preset map[string]string
	switch Provider(sc) {
	case v1alpha1.AWSNLB:
		preset = awsNLBAnnotations(sc)
	case v1alpha1.GKE:
		preset = gkeAnnotations()
	case v1alpha1.Azure:
		preset = azureAnnotations(sc)
	}
	if a := merge(preset, spec.Annotations); len(a) > 0 {
		svc.Annotations = a
	}
	return svc
}

// awsNLBAnnotations ask for an NLB sending straight to pod IPs, that keeps a
// draining pod's connections for the deregistration delay (by default the
// whole grace period) and then resets them, and that health-checks
// readiness, which turns 503 as soon as a pod starts its preStop wait.
// Client IPs are preserved (not proxy protocol v2: the servers do not parse
// its header); cross-zone balancing keeps pods in every zone equally loaded.
func awsNLBAnnotations(sc *v1alpha1.SocketCluster) map[string]string {
	delay := Seconds(TimingsFor(sc).DeregistrationDelay)
	return map[string]string{
		AnnotationAWSType:       "external",
		AnnotationAWSTargetType: "ip",
		AnnotationAWSScheme:     "internet-facing",
		AnnotationAWSTargetGroup: fmt.Sprintf("deregistration_delay.timeout_seconds=%d,"+
			"deregistration_delay.connection_termination.enabled=true,preserve_client_ip.enabled=true", delay),
		AnnotationAWSAttributes:  "load_balancing.cross_zone.enabled=true",
		AnnotationAWSCrossZone:   "true",
		AnnotationAWSHealthProto: "http",
		AnnotationAWSHealthPort:  fmt.Sprint(sc.Spec.Listeners.AdminPort),
		AnnotationAWSHealthPath:  "/readyz",
	}
}

func gkeAnnotations() map[string]string {
	return map[string]string{AnnotationGKEL4RBS: "enabled"}
}

// azureAnnotations raise the TCP idle timeout above the heartbeat timeout,
// so a device's pings always keep its flow alive.
func azureAnnotations(sc *v1alpha1.SocketCluster) map[string]string {
	return map[string]string{AnnotationAzureIdleTimeout: fmt.Sprint(AzureIdleTimeoutMinutes(sc))}
}
