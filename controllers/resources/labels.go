// Package resources builds the objects a SocketCluster owns. Every builder is
// a pure function of the SocketCluster (as defaulted by the API server), so
// what the operator applies can be tested without a cluster.
package resources

import (
	"maps"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Label keys and values shared by every owned object.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	AppName        = "socketserver"
	ManagerName    = "socketcluster-operator"
)

// SelectorLabels select the pods of one SocketCluster. They must never change
// for an existing cluster: a Deployment's selector is immutable.
func SelectorLabels(sc *v1alpha1.SocketCluster) map[string]string {
	return map[string]string{LabelName: AppName, LabelInstance: sc.Name}
}

// Labels are put on every owned object and pod.
func Labels(sc *v1alpha1.SocketCluster) map[string]string {
	l := SelectorLabels(sc)
	l[LabelManagedBy] = ManagerName
	return l
}

// objectMeta names an owned object and makes the SocketCluster its
// controlling owner, so deleting the SocketCluster deletes it.
func objectMeta(sc *v1alpha1.SocketCluster, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:            name,
		Namespace:       sc.Namespace,
		Labels:          Labels(sc),
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(sc, v1alpha1.GroupVersion.WithKind("SocketCluster"))},
	}
}

// merge returns base with over's entries on top.
func merge(base, over map[string]string) map[string]string {
	out := make(map[string]string, len(base)+len(over))
	maps.Copy(out, base)
	maps.Copy(out, over)
	return out
}
