package resources

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Operator says where the operator runs, so that the NetworkPolicy can
// admit it to the admin port. The zero value (an operator outside the
// cluster, e.g. make run) admits nothing.
type Operator struct {
	// Namespace of the operator's pods; empty when not known.
	Namespace string
	// PodLabels select the operator's pods in Namespace; empty means every
	// pod of that namespace.
	PodLabels map[string]string
}

// Peer is the NetworkPolicy peer of the operator's pods, or nil.
func (o Operator) Peer() *networkingv1.NetworkPolicyPeer {
	if o.Namespace == "" {
		return nil
	}
	return &networkingv1.NetworkPolicyPeer{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: o.Namespace}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: o.PodLabels},
	}
}

// NetworkPolicyEnabled tells whether the SocketCluster wants its NetworkPolicy
// (spec.admin.networkPolicy, true unless set to false).
func NetworkPolicyEnabled(sc *v1alpha1.SocketCluster) bool {
	return sc.Spec.Admin.NetworkPolicy == nil || *sc.Spec.Admin.NetworkPolicy
}

// NetworkPolicy selects the SocketCluster's pods. The device ports are open
// to everyone; the admin port (backend API, /drain, probes, metrics) only to
// spec.admin.allowedFrom and the operator. Every other port is closed. Pods
// reach their own admin port over loopback (the preStop drain), which no
// NetworkPolicy filters.
func NetworkPolicy(sc *v1alpha1.SocketCluster, op Operator) *networkingv1.NetworkPolicy {
	var devicePorts []networkingv1.NetworkPolicyPort
	for _, p := range DevicePorts(sc) {
		devicePorts = append(devicePorts, tcpPort(p.ContainerPort))
	}
	rules := []networkingv1.NetworkPolicyIngressRule{{Ports: devicePorts}}

	var peers []networkingv1.NetworkPolicyPeer
	for _, p := range sc.Spec.Admin.AllowedFrom {
		peers = append(peers, networkingv1.NetworkPolicyPeer{
			NamespaceSelector: p.NamespaceSelector,
			PodSelector:       p.PodSelector,
			IPBlock:           p.IPBlock,
		})
	}
	if p := op.Peer(); p != nil {
		peers = append(peers, *p)
	}
	// A rule without peers admits everyone: with no peer, no rule.
	if len(peers) > 0 {
		rules = append(rules, networkingv1.NetworkPolicyIngressRule{
			From:  peers,
			Ports: []networkingv1.NetworkPolicyPort{tcpPort(sc.Spec.Listeners.AdminPort)},
		})
	}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: objectMeta(sc, sc.Name),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: SelectorLabels(sc)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     rules,
		},
	}
}

func tcpPort(port int32) networkingv1.NetworkPolicyPort {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p}
}
