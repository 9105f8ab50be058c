package resources_test

import (
	"reflect"
	"testing"

	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestPodDisruptionBudget(t *testing.T) {
	sc := defaulted(t, minimal)
	pdb := resources.PodDisruptionBudget(sc)
	assertOwned(t, pdb.OwnerReferences, sc)
	if *pdb.Spec.MaxUnavailable != intstr.FromInt32(1) || pdb.Spec.MinAvailable != nil {
		t.Errorf("maxUnavailable %v minAvailable %v", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
	if !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, resources.SelectorLabels(sc)) {
		t.Errorf("selector %v", pdb.Spec.Selector)
	}
	if *pdb.Spec.UnhealthyPodEvictionPolicy != policyv1.AlwaysAllow {
		t.Errorf("unhealthy pod eviction %v", *pdb.Spec.UnhealthyPodEvictionPolicy)
	}

	sc = defaulted(t, minimal+"  podDisruptionBudget: {maxUnavailable: 20%}\n")
	if got := *resources.PodDisruptionBudget(sc).Spec.MaxUnavailable; got != intstr.FromString("20%") {
		t.Errorf("maxUnavailable %v", got)
	}
}
