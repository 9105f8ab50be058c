package resources

import (
	"fmt"
	"math"

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

// Service is the public entry point: the TCP listener, the WebSocket
// listener (port "ws", WebSocket and SSE) and the gRPC one when enabled,
// never the admin API.
func Service(sc *v1alpha1.SocketCluster) *corev1.Service {
	spec := &sc.Spec.Service
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(sc, sc.Name),
		Spec: corev1.ServiceSpec{
			Type:                     spec.Type,
			Selector:                 SelectorLabels(sc),
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
	if spec.LoadBalancer != nil && spec.LoadBalancer.Provider == v1alpha1.AWSNLB {
		preset = awsNLBAnnotations(sc)
	}
	if a := merge(preset, spec.Annotations); len(a) > 0 {
		svc.Annotations = a
	}
	return svc
}

// awsNLBAnnotations ask for an NLB sending straight to pod IPs, that keeps a
// draining pod's connections for the deregistration delay and then closes
// them, and that health-checks readiness, which turns 503 when a pod drains.
func awsNLBAnnotations(sc *v1alpha1.SocketCluster) map[string]string {
	delay := int64(math.Ceil(sc.Spec.Drain.DeregistrationDelay.Seconds()))
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
