package controllers_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// waitReconciled waits until the status reflects the SocketCluster's
// current generation, i.e. a reconcile ran after the last spec change.
func waitReconciled(t *testing.T, sc *v1alpha1.SocketCluster) *v1alpha1.SocketCluster {
	t.Helper()
	c := k8s(t)
	generation := sc.Generation
	eventually(t, fmt.Sprintf("generation %d reconciled", generation), func() error {
		if err := c.Get(ctx, key(sc.Namespace, sc.Name), sc); err != nil {
			return err
		}
		if sc.Status.ObservedGeneration < generation {
			return fmt.Errorf("observedGeneration %d", sc.Status.ObservedGeneration)
		}
		return nil
	})
	return sc
}

func TestGeneratedAPIToken(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal)

	tokenSecret := &corev1.Secret{}
	eventually(t, "generated API token Secret", func() error {
		return c.Get(ctx, key(ns, "edge-api-token"), tokenSecret)
	})
	assertControlledBy(t, tokenSecret, sc)
	token := tokenSecret.Data["token"]
	if raw, err := hex.DecodeString(string(token)); err != nil || len(raw) < 32 {
		t.Errorf("token %q: want at least 32 random bytes, hex-encoded (%v)", token, err)
	}

	d := deployment(t, c, ns, anyDeployment)
	pod := d.Spec.Template.Spec
	var volume *corev1.SecretVolumeSource
	for _, v := range pod.Volumes {
		if v.Name == "api-token" {
			volume = v.Secret
		}
	}
	if volume == nil || volume.SecretName != "edge-api-token" {
		t.Errorf("volumes %+v: want the generated Secret mounted", pod.Volumes)
	}
	ctr := pod.Containers[0]
	if !slices.Contains(ctr.Args, "--api-token-file=/etc/socketserver/api-token/token") {
		t.Errorf("args %v lack --api-token-file", ctr.Args)
	}
	if !slices.Contains(ctr.Lifecycle.PreStop.Exec.Command, "--api-token-file=/etc/socketserver/api-token/token") {
		t.Errorf("preStop %v: the drain must authenticate", ctr.Lifecycle.PreStop.Exec.Command)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken %v, want false", pod.AutomountServiceAccountToken)
	}
	eventually(t, "status.apiTokenSecretName", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		if sc.Status.APITokenSecretName != "edge-api-token" {
			return fmt.Errorf("apiTokenSecretName %q", sc.Status.APITokenSecretName)
		}
		return nil
	})

	// Later reconciles (two spec changes, a touch) keep the token: the
	// backends that read it would be locked out otherwise.
	hash := d.Spec.Template.Annotations[resources.AnnotationSecretHash]
	for _, replicas := range []int{4, 5} {
		waitReconciled(t, patchSpec(t, c, ns, "edge", fmt.Sprintf(`{"replicas":%d}`, replicas)))
	}
	touch(t, c, ns, "edge")
	deployment(t, c, ns, func(d *appsv1.Deployment) error {
		if *d.Spec.Replicas != 5 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})
	after := &corev1.Secret{}
	if err := c.Get(ctx, key(ns, "edge-api-token"), after); err != nil {
		t.Fatal(err)
	}
	if string(after.Data["token"]) != string(token) || after.ResourceVersion != tokenSecret.ResourceVersion {
		t.Error("the API token Secret changed on a later reconcile")
	}
	if h := deployment(t, c, ns, anyDeployment).Spec.Template.Annotations[resources.AnnotationSecretHash]; h != hash {
		t.Error("secret hash changed: the pods would roll for nothing")
	}
}

func TestNamedAPITokenIsUsed(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	secret(t, c, ns, "api", map[string]string{"bearer": "0123456789abcdef0123456789abcdef"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  redis: {addresses: ["127.0.0.1:1"]}
  auth: {deviceKeySecretRef: {name: device-key, key: key}, apiTokenSecretRef: {name: api, key: bearer}}
`)
	d := deployment(t, c, ns, anyDeployment)
	if !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--api-token-file=/etc/socketserver/api-token/bearer") {
		t.Errorf("args %v", d.Spec.Template.Spec.Containers[0].Args)
	}
	sc = waitReconciled(t, sc)
	if sc.Status.APITokenSecretName != "api" {
		t.Errorf("apiTokenSecretName %q, want the named Secret", sc.Status.APITokenSecretName)
	}
	if err := c.Get(ctx, key(ns, "edge-api-token"), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("generated a token although the spec names one: %v", err)
	}
}

// A Secret with the generated token's name that the SocketCluster does not
// own is neither used nor changed: its token could be anyone's.
func TestForeignAPITokenSecretIsNotUsed(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	foreign := secret(t, c, ns, "edge-api-token", map[string]string{"token": "known-to-someone-else"})
	sc := socketCluster(t, c, ns, minimal)
	eventually(t, "name conflict", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonNameConflict)
	})
	if msg := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDegraded).Message; !strings.Contains(msg, "Secret edge-api-token") {
		t.Errorf("message %q does not name the Secret", msg)
	}
	if sc.Status.APITokenSecretName != "" {
		t.Errorf("status names the foreign Secret %q", sc.Status.APITokenSecretName)
	}
	if err := c.Get(ctx, key(ns, "edge"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("Deployment created with someone else's token: %v", err)
	}
	after := &corev1.Secret{}
	if err := c.Get(ctx, key(ns, "edge-api-token"), after); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != foreign.ResourceVersion || len(after.OwnerReferences) != 0 {
		t.Errorf("foreign Secret changed: %+v", after.ObjectMeta)
	}
}

func TestNetworkPolicyGuardsTheAdminPort(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal+`
  admin:
    allowedFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backends}}
`)
	np := &networkingv1.NetworkPolicy{}
	eventually(t, "NetworkPolicy", func() error { return c.Get(ctx, key(ns, "edge"), np) })
	assertControlledBy(t, np, sc)

	// The policy selects exactly the pods of the Deployment.
	d := deployment(t, c, ns, anyDeployment)
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) || sel.Empty() {
		t.Errorf("pod selector %v does not select the pods %v (%v)", np.Spec.PodSelector, d.Spec.Template.Labels, err)
	}
	if len(np.Spec.Ingress) != 2 {
		t.Fatalf("ingress %+v", np.Spec.Ingress)
	}
	portsOf := func(r networkingv1.NetworkPolicyIngressRule) []intstr.IntOrString {
		var out []intstr.IntOrString
		for _, p := range r.Ports {
			out = append(out, *p.Port)
		}
		return out
	}
	devices, admin := np.Spec.Ingress[0], np.Spec.Ingress[1]
	if len(devices.From) != 0 || !reflect.DeepEqual(portsOf(devices), []intstr.IntOrString{intstr.FromInt32(7000), intstr.FromInt32(8080)}) {
		t.Errorf("device rule %+v: want tcp and ws from anywhere", devices)
	}
	if !reflect.DeepEqual(portsOf(admin), []intstr.IntOrString{intstr.FromInt32(9090)}) || len(admin.From) != 2 {
		t.Fatalf("admin rule %+v", admin)
	}
	if admin.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "backends" {
		t.Errorf("admin peer %+v, want the backends namespace", admin.From[0])
	}
	op := admin.From[1]
	if op.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "socketcluster-system" ||
		!reflect.DeepEqual(op.PodSelector.MatchLabels, map[string]string{"app.kubernetes.io/name": "socketcluster-operator"}) {
		t.Errorf("operator peer %+v", op)
	}
	// The operator of config/default is what that peer admits.
	mgr := &appsv1.Deployment{}
	if err := c.Get(ctx, key("socketcluster-system", "socketcluster-controller-manager"), mgr); err != nil {
		t.Fatal(err)
	}
	if !labels.SelectorFromSet(op.PodSelector.MatchLabels).Matches(labels.Set(mgr.Spec.Template.Labels)) {
		t.Errorf("operator peer %v does not select the operator pods %v", op.PodSelector.MatchLabels, mgr.Spec.Template.Labels)
	}

	// Opting out deletes it; opting in again brings it back.
	sc = waitReconciled(t, patchSpec(t, c, ns, "edge", `{"admin":{"networkPolicy":false,"allowedFrom":null}}`))
	eventually(t, "NetworkPolicy deleted", func() error {
		if err := c.Get(ctx, key(ns, "edge"), &networkingv1.NetworkPolicy{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	patchSpec(t, c, ns, "edge", `{"admin":{"networkPolicy":true}}`)
	eventually(t, "NetworkPolicy again", func() error {
		np = &networkingv1.NetworkPolicy{}
		return c.Get(ctx, key(ns, "edge"), np)
	})
	if len(np.Spec.Ingress) != 2 || len(np.Spec.Ingress[1].From) != 1 {
		t.Errorf("ingress %+v, want the admin port for the operator only", np.Spec.Ingress)
	}
}

// An owned object the API server refuses shows as Degraded with the API
// server's reason; the other objects are applied all the same.
func TestApplyFailureShowsInTheStatus(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	// The CRD cannot check CIDRs (CEL's isCIDR needs Kubernetes 1.31);
	// the NetworkPolicy's validation refuses this one when it is applied.
	sc := socketCluster(t, c, ns, minimal+`
  admin:
    allowedFrom:
    - ipBlock: {cidr: 10.0.0.0/33}
`)
	eventually(t, "degraded", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonApplyFailed)
	})
	msg := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDegraded).Message
	if !strings.Contains(msg, "NetworkPolicy edge") || !strings.Contains(msg, "10.0.0.0/33") {
		t.Errorf("message %q does not say which object and why", msg)
	}
	if sc.Status.ObservedGeneration != sc.Generation {
		t.Errorf("observedGeneration %d, generation %d", sc.Status.ObservedGeneration, sc.Generation)
	}
	deployment(t, c, ns, anyDeployment) // applied despite the NetworkPolicy
	events := &corev1.EventList{}
	eventually(t, "warning event", func() error {
		if err := c.List(ctx, events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == v1alpha1.ReasonApplyFailed && e.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return errors.New("no ApplyFailed event")
	})

	// Fixed: no longer degraded by it (nothing listens on the test's Redis address).
	patchSpec(t, c, ns, "edge", `{"admin":{"allowedFrom":[{"ipBlock":{"cidr":"10.0.0.0/16"}}]}}`)
	eventually(t, "recovered", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonRedisUnreachable)
	})
	np := &networkingv1.NetworkPolicy{}
	if err := c.Get(ctx, key(ns, "edge"), np); err != nil || np.Spec.Ingress[1].From[0].IPBlock.CIDR != "10.0.0.0/16" {
		t.Errorf("NetworkPolicy %+v (%v)", np.Spec.Ingress, err)
	}
}

// The operator's metrics are served only to callers the API server
// authenticates and authorizes, which the operator checks with TokenReviews
// and SubjectAccessReviews.
func TestOperatorMayCheckMetricsCallers(t *testing.T) {
	c := k8s(t)
	for _, res := range []struct{ group, resource string }{
		{"authentication.k8s.io", "tokenreviews"},
		{"authorization.k8s.io", "subjectaccessreviews"},
	} {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               operatorAccount,
			Groups:             []string{"system:serviceaccounts"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Group: res.group, Resource: res.resource, Verb: "create"},
		}}
		if err := c.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		if !sar.Status.Allowed {
			t.Errorf("the operator may not create %s.%s: %s", res.resource, res.group, sar.Status.Reason)
		}
	}
	reader := &rbacv1.ClusterRole{}
	if err := c.Get(ctx, key("", "socketcluster-metrics-reader"), reader); err != nil {
		t.Fatal(err)
	}
	want := []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}
	if !reflect.DeepEqual(reader.Rules, want) {
		t.Errorf("metrics-reader rules %+v, want %+v", reader.Rules, want)
	}
}
