package resources

import (
	"encoding/json"
	"hash/fnv"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// LabelRevision carries the pod template revision of a ReconnectOnce
// SocketCluster on its Deployments and pods; the public Service selects the
// active one.
const LabelRevision = "sockets.socketcluster.io/revision"

// Revision names a pod template by its content: equal templates get the
// same revision, so a change of the spec that leaves the pods alone (the
// replicas, the Service) starts no rollout.
func Revision(t *corev1.PodTemplateSpec) string {
	b, err := json.Marshal(t)
	if err != nil {
		panic(err) // a PodTemplateSpec always marshals
	}
	h := fnv.New64a()
	_, _ = h.Write(b)
	return rand.SafeEncodeString(strconv.FormatUint(h.Sum64(), 10))[:10]
}

// RevisionDeploymentName is the Deployment of one revision.
func RevisionDeploymentName(sc *v1alpha1.SocketCluster, revision string) string {
	return sc.Name + "-" + revision
}

// RevisionDeployment runs one revision of a ReconnectOnce SocketCluster:
// Deployment's pods, labelled with their revision, in a Deployment of its
// own whose template never changes (a new template is a new revision). The
// rollout decides its replicas. It returns the revision too.
func RevisionDeployment(sc *v1alpha1.SocketCluster, image, secretHash string, replicas int32) (*appsv1.Deployment, string) {
	d := Deployment(sc, image, secretHash)
	rev := Revision(&d.Spec.Template)
	d.Name = RevisionDeploymentName(sc, rev)
	d.Labels[LabelRevision] = rev
	d.Spec.Replicas = ptr.To(replicas)
	d.Spec.Selector.MatchLabels = RevisionSelectorLabels(sc, rev)
	d.Spec.Template.Labels = merge(d.Spec.Template.Labels, map[string]string{LabelRevision: rev})
	return d, rev
}

// RevisionSelectorLabels select the pods of one revision.
func RevisionSelectorLabels(sc *v1alpha1.SocketCluster, revision string) map[string]string {
	return merge(SelectorLabels(sc), map[string]string{LabelRevision: revision})
}

// PublicSelectorLabels select the pods the public Service sends devices
// to: those of revision, or every pod of the SocketCluster when revision is
// empty (Surge).
func PublicSelectorLabels(sc *v1alpha1.SocketCluster, revision string) map[string]string {
	if revision == "" {
		return SelectorLabels(sc)
	}
	return RevisionSelectorLabels(sc, revision)
}

// ReconnectOnce tells whether the SocketCluster rolls out blue-green.
func ReconnectOnce(sc *v1alpha1.SocketCluster) bool {
	return sc.Spec.Rollout.Strategy == v1alpha1.RolloutReconnectOnce
}
