package resources

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// AdminServiceName is the in-cluster address of the backend API.
func AdminServiceName(sc *v1alpha1.SocketCluster) string { return sc.Name + "-admin" }

// AdminService exposes the backend API (and metrics) inside the cluster only.
func AdminService(sc *v1alpha1.SocketCluster) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(sc, AdminServiceName(sc)),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: SelectorLabels(sc),
			Ports: []corev1.ServicePort{
				{Name: "admin", Port: sc.Spec.Listeners.AdminPort, TargetPort: intstr.FromString("admin"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}
