package resources_test

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/controllers/resources"
)

var operator = resources.Operator{Namespace: "socketcluster-system", PodLabels: map[string]string{"app.kubernetes.io/name": "socketcluster-operator"}}

func ports(t *testing.T, ps []networkingv1.NetworkPolicyPort) []int32 {
	t.Helper()
	var out []int32
	for _, p := range ps {
		if p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP || p.Port == nil || p.Port.Type != intstr.Int || p.EndPort != nil {
			t.Errorf("port %+v, want one numbered TCP port", p)
			continue
		}
		out = append(out, p.Port.IntVal)
	}
	return out
}

func operatorPeer() networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "socketcluster-system"}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "socketcluster-operator"}},
	}
}

func TestNetworkPolicyDefaults(t *testing.T) {
	sc := defaulted(t, minimal)
	if !resources.NetworkPolicyEnabled(sc) {
		t.Fatal("NetworkPolicy off by default")
	}
	np := resources.NetworkPolicy(sc, operator)
	assertOwned(t, np.OwnerReferences, sc)
	if np.Name != "edge" || np.Namespace != "prod" {
		t.Errorf("name %s/%s", np.Namespace, np.Name)
	}
	if !reflect.DeepEqual(np.Spec.PodSelector.MatchLabels, resources.SelectorLabels(sc)) {
		t.Errorf("pod selector %v, want the socket-server pods", np.Spec.PodSelector)
	}
	if !reflect.DeepEqual(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policy types %v: only ingress is restricted (pods reach Redis freely)", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) != 2 {
		t.Fatalf("ingress rules %+v, want devices and admin", np.Spec.Ingress)
	}
	devices, admin := np.Spec.Ingress[0], np.Spec.Ingress[1]
	if len(devices.From) != 0 || !reflect.DeepEqual(ports(t, devices.Ports), []int32{7000, 8080}) {
		t.Errorf("device rule %+v, want tcp 7000 and ws 8080 from anywhere", devices)
	}
	if !reflect.DeepEqual(ports(t, admin.Ports), []int32{9090}) {
		t.Errorf("admin rule ports %+v", admin.Ports)
	}
	if !reflect.DeepEqual(admin.From, []networkingv1.NetworkPolicyPeer{operatorPeer()}) {
		t.Errorf("admin peers %+v, want only the operator's pods in its namespace", admin.From)
	}
}

// Every listener except the admin port is a device port, so that a new
// listener is open to devices without touching the NetworkPolicy.
func TestNetworkPolicyDevicePortsFollowTheContainer(t *testing.T) {
	sc := defaulted(t, minimal+"  listeners: {tcp: {port: 7443}, websocket: {port: 443}, adminPort: 9000}\n")
	np := resources.NetworkPolicy(sc, operator)
	var want []int32
	for _, p := range container(t, resources.Deployment(sc, "img", "")).Ports {
		if p.Name != "admin" {
			want = append(want, p.ContainerPort)
		}
	}
	if got := ports(t, np.Spec.Ingress[0].Ports); !reflect.DeepEqual(got, want) || !reflect.DeepEqual(want, []int32{7443, 443}) {
		t.Errorf("device ports %v, container's non-admin ports %v", got, want)
	}
	if got := ports(t, np.Spec.Ingress[1].Ports); !reflect.DeepEqual(got, []int32{9000}) {
		t.Errorf("admin port %v", got)
	}
}

func TestNetworkPolicyAllowedFrom(t *testing.T) {
	sc := defaulted(t, minimal+`
  admin:
    allowedFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backends}}
    - podSelector: {matchLabels: {app: api}}
    - namespaceSelector: {matchLabels: {team: obs}}
      podSelector: {matchLabels: {app: prometheus}}
    - ipBlock: {cidr: 10.0.0.0/16}
`)
	admin := resources.NetworkPolicy(sc, operator).Spec.Ingress[1]
	sel := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	want := []networkingv1.NetworkPolicyPeer{
		{NamespaceSelector: sel("kubernetes.io/metadata.name", "backends")},
		{PodSelector: sel("app", "api")},
		{NamespaceSelector: sel("team", "obs"), PodSelector: sel("app", "prometheus")},
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16"}},
		operatorPeer(),
	}
	if !reflect.DeepEqual(admin.From, want) {
		t.Errorf("admin peers\n got %+v\nwant %+v", admin.From, want)
	}
}

func TestNetworkPolicyOperatorOutsideTheCluster(t *testing.T) {
	sc := defaulted(t, minimal)
	// No peer at all: an ingress rule without "from" would admit everyone,
	// so the admin port gets no rule and is closed.
	np := resources.NetworkPolicy(sc, resources.Operator{})
	if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 0 || !reflect.DeepEqual(ports(t, np.Spec.Ingress[0].Ports), []int32{7000, 8080}) {
		t.Errorf("ingress %+v, want only the device ports", np.Spec.Ingress)
	}

	// The operator's namespace without pod labels: every pod of it.
	admin := resources.NetworkPolicy(sc, resources.Operator{Namespace: "ops"}).Spec.Ingress[1]
	if len(admin.From) != 1 || admin.From[0].PodSelector == nil || len(admin.From[0].PodSelector.MatchLabels) != 0 ||
		admin.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "ops" {
		t.Errorf("admin peers %+v", admin.From)
	}
}

func TestNetworkPolicyOptOut(t *testing.T) {
	if !resources.NetworkPolicyEnabled(defaulted(t, minimal+"  admin: {networkPolicy: true}\n")) {
		t.Error("networkPolicy: true disables it")
	}
	if resources.NetworkPolicyEnabled(defaulted(t, minimal+"  admin: {networkPolicy: false}\n")) {
		t.Error("networkPolicy: false keeps it")
	}
}
