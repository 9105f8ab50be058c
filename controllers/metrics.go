package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// conditionGauge exports every SocketCluster's status conditions, so that
// alerts need no kube-state-metrics custom-resource configuration: 1 on the
// condition's current status, 0 on the other two (kube-state-metrics'
// convention for Pod and Node conditions).
var conditionGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "socketcluster_condition",
	Help: "Status conditions of each SocketCluster: 1 for the current status of the condition, 0 for the others.",
}, []string{"namespace", "name", "type", "status"})

func init() { metrics.Registry.MustRegister(conditionGauge) }

var conditionStatuses = []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown}

// RecordConditions sets the condition gauge from sc's status as written.
func RecordConditions(sc *v1alpha1.SocketCluster) {
	for _, c := range sc.Status.Conditions {
		for _, s := range conditionStatuses {
			v := 0.0
			if c.Status == s {
				v = 1
			}
			conditionGauge.WithLabelValues(sc.Namespace, sc.Name, c.Type, string(s)).Set(v)
		}
	}
}

// forgetConditions drops the series of a SocketCluster that is gone, so
// that a deleted cluster does not stay Degraded on dashboards.
func forgetConditions(key types.NamespacedName) {
	conditionGauge.DeletePartialMatch(prometheus.Labels{"namespace": key.Namespace, "name": key.Name})
}
