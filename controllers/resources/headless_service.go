package resources

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// HeadlessServiceName resolves to every ready pod's address.
func HeadlessServiceName(sc *v1alpha1.SocketCluster) string { return sc.Name + "-headless" }

// HeadlessService lets clients inside the cluster (and scrapers) reach each
// pod directly instead of a load-balanced one.
func HeadlessService(sc *v1alpha1.SocketCluster) *corev1.Service {
	l := &sc.Spec.Listeners
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(sc, HeadlessServiceName(sc)),
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: corev1.ClusterIPNone,
			Selector:  SelectorLabels(sc),
			Ports: append(devicePortsOfService(sc),
				corev1.ServicePort{Name: "admin", Port: l.AdminPort, TargetPort: intstr.FromString("admin"), Protocol: corev1.ProtocolTCP}),
		},
	}
}
