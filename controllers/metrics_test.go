package controllers

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

func conditionValue(ns, name, typ string, s metav1.ConditionStatus) float64 {
	for _, m := range conditionSeries(nil) {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if l["namespace"] == ns && l["name"] == name && l["type"] == typ && l["status"] == string(s) {
			return m.GetGauge().GetValue()
		}
	}
	return -1 // no such series
}

// conditionSeries gathers socketcluster_condition from the registry the
// manager serves on its metrics endpoint.
func conditionSeries(t *testing.T) []*dto.Metric {
	mfs, err := metrics.Registry.Gather()
	if err != nil && t != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "socketcluster_condition" {
			return mf.GetMetric()
		}
	}
	return nil
}

func TestConditionMetric(t *testing.T) {
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "metrics-unit", Name: "a"}}
	sc.Status.Conditions = []metav1.Condition{
		{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonSecretMissing},
		{Type: v1alpha1.ConditionAvailable, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonDeploymentNotFound},
	}
	RecordConditions(sc)
	other := sc.DeepCopy()
	other.Name = "b"
	RecordConditions(other)
	for typ, want := range map[string]metav1.ConditionStatus{v1alpha1.ConditionDegraded: metav1.ConditionTrue, v1alpha1.ConditionAvailable: metav1.ConditionFalse} {
		for _, s := range conditionStatuses {
			if v, w := conditionValue("metrics-unit", "a", typ, s), map[bool]float64{true: 1}[s == want]; v != w {
				t.Errorf("%s=%s: %v, want %v", typ, s, v, w)
			}
		}
	}
	// Recovery moves the 1 to the new status.
	sc.Status.Conditions[0].Status = metav1.ConditionFalse
	RecordConditions(sc)
	if conditionValue("metrics-unit", "a", v1alpha1.ConditionDegraded, metav1.ConditionTrue) != 0 ||
		conditionValue("metrics-unit", "a", v1alpha1.ConditionDegraded, metav1.ConditionFalse) != 1 {
		t.Fatal("Degraded did not follow the status")
	}
	// A deleted SocketCluster's series go; another's stay.
	forgetConditions(types.NamespacedName{Namespace: "metrics-unit", Name: "a"})
	for _, s := range conditionStatuses {
		if v := conditionValue("metrics-unit", "a", v1alpha1.ConditionDegraded, s); v != -1 {
			t.Fatalf("Degraded=%s of a deleted SocketCluster still exported: %v", s, v)
		}
	}
	if conditionValue("metrics-unit", "b", v1alpha1.ConditionDegraded, metav1.ConditionTrue) != 1 {
		t.Fatal("forgetting a removed b's series")
	}
}

// ConditionValue lets the envtest tests (package controllers_test) read the gauge.
var ConditionValue = conditionValue
