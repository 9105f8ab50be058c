package controllers_test

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

const deregistrationRule = "drain.deregistrationDelay must be longer than drain.preStopWait"

// setDeregistrationRule removes (on=false) or restores the CRD's rule on
// the deregistration delay, as if the CRD were the one of an older operator.
func setDeregistrationRule(t *testing.T, c client.Client, saved *[]any, on bool) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
		if err := c.Get(ctx, client.ObjectKey{Name: "socketclusters.sockets.socketcluster.io"}, crd); err != nil {
			return err
		}
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		v := versions[0].(map[string]any)
		path := []string{"schema", "openAPIV3Schema", "properties", "spec", "x-kubernetes-validations"}
		rules, _, _ := unstructured.NestedSlice(v, path...)
		if on {
			rules = *saved
		} else {
			*saved = rules
			var kept []any
			for _, r := range rules {
				if !strings.Contains(fmt.Sprint(r.(map[string]any)["message"]), deregistrationRule) {
					kept = append(kept, r)
				}
			}
			rules = kept
		}
		if err := unstructured.SetNestedSlice(v, rules, path...); err != nil {
			return err
		}
		versions[0] = v
		if err := unstructured.SetNestedSlice(crd.Object, versions, "spec", "versions"); err != nil {
			return err
		}
		return c.Update(ctx, crd)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A SocketCluster stored before the preStop wait existed carries the old
// default deregistrationDelay: 30s, which the rule on aws-nlb refuses. It
// must still take other changes (an image rollout), is warned about, and
// the rule holds back only a change of the timings themselves.
func TestStaleDeregistrationDelayStillTakesOtherChanges(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	var saved []any
	setDeregistrationRule(t, c, &saved, false)
	restored := false
	t.Cleanup(func() {
		if !restored {
			setDeregistrationRule(t, c, &saved, true)
		}
	})
	eventually(t, "an aws-nlb SocketCluster with the old 30s default", func() error {
		sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Name: "edge", Namespace: ns}}
		sc.Spec.Redis.Addresses = []string{"127.0.0.1:1"}
		sc.Spec.Auth.DeviceKeySecretRef = &v1alpha1.SecretKeyRef{Name: "device-key", Key: "key"}
		sc.Spec.Drain.DeregistrationDelay = &metav1.Duration{Duration: 30e9}
		sc.Spec.Service.LoadBalancer = &v1alpha1.LoadBalancerSpec{Provider: v1alpha1.AWSNLB}
		return c.Create(ctx, sc)
	})
	setDeregistrationRule(t, c, &saved, true)
	restored = true

	// Changing the delay is refused once the rule is back (each try is a
	// change, so the loop ends when the API server serves the rule again).
	delay := 31
	eventually(t, "the rule back", func() error {
		delay++
		err := c.Patch(ctx, &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Name: "edge", Namespace: ns}},
			client.RawPatch("application/merge-patch+json", []byte(fmt.Sprintf(`{"spec":{"drain":{"deregistrationDelay":"%ds"}}}`, delay))))
		if err == nil || !strings.Contains(err.Error(), deregistrationRule) {
			return fmt.Errorf("a new short delay was not refused: %v", err)
		}
		return nil
	})
	// Other changes pass: an image rollout, the heartbeat.
	patchSpec(t, c, ns, "edge", `{"image":"socketcluster/socketcluster:next","heartbeat":{"interval":"20s","timeout":"1m"}}`)
	// The operator says what is wrong.
	eventually(t, "TimingsSafe=False", func() error {
		sc := &v1alpha1.SocketCluster{}
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionTimingsSafe, metav1.ConditionFalse, v1alpha1.ReasonDeregistrationDelayTooShort)
	})
	// Removing the stale delay is a change the rule accepts.
	patchSpec(t, c, ns, "edge", `{"drain":{"deregistrationDelay":null}}`)
}
