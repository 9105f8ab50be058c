// Package controllers reconciles SocketClusters into the objects that run them.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/conditions"
	"github.com/socketcluster/socketcluster/controllers/connections"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

const (
	// ControllerName names the controller in logs, metrics and events.
	ControllerName = "socketcluster-operator"

	// StatusInterval is how often the connection count is refreshed.
	StatusInterval = 15 * time.Second

	// secretIndex finds the SocketClusters that reference a Secret.
	secretIndex = "spec.secretNames"
)

// errNotOwned refuses to take over an object someone else made: deleting
// the SocketCluster would delete it.
var errNotOwned = errors.New("exists and is not controlled by this SocketCluster")

// SocketClusterReconciler makes the owned objects match each SocketCluster
// and reports their state, plus live connection counts, in its status.
type SocketClusterReconciler struct {
	// Client reads owned objects from the cache and writes.
	Client client.Client
	// APIReader reads Secrets and Pods from the API server: caching every
	// Secret and Pod of the watched namespaces would cost memory for a few
	// reads per reconcile.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// DefaultImage runs the pods of SocketClusters without spec.image.
	DefaultImage string

	redis connections.Clients // one per SocketCluster, for the status refresh
}

// +kubebuilder:rbac:groups=sockets.socketcluster.io,resources=socketclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=sockets.socketcluster.io,resources=socketclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=sockets.socketcluster.io,resources=socketclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=list
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile applies the owned objects and refreshes the status.
func (r *SocketClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	sc := &v1alpha1.SocketCluster{}
	if err := r.Client.Get(ctx, req.NamespacedName, sc); err != nil {
		if apierrors.IsNotFound(err) {
			r.redis.Forget(req.String())
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !sc.DeletionTimestamp.IsZero() {
		r.redis.Forget(req.String())
		return ctrl.Result{}, nil // the garbage collector removes what it owns
	}

	secrets, missing, err := r.readSecrets(ctx, sc)
	if err != nil {
		return ctrl.Result{}, err
	}
	deploy, notOwned, err := r.applyOwned(ctx, sc, secrets, len(missing) == 0)
	if err != nil {
		return ctrl.Result{}, err
	}
	problems := conditions.Problems{MissingSecrets: missing, NotOwned: notOwned}

	pods := &corev1.PodList{}
	if err := r.APIReader.List(ctx, pods, client.InNamespace(sc.Namespace), client.MatchingLabels(resources.SelectorLabels(sc))); err != nil {
		return ctrl.Result{}, err
	}
	count, err := r.countConnections(ctx, sc, secrets, pods.Items)
	if err != nil {
		log.Info("cannot read connection counts from Redis", "error", err.Error())
		problems.Redis = err
	}
	if err := r.updateStatus(ctx, sc, deploy, problems, count); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: StatusInterval}, nil
}

// applyOwned applies every owned object and returns the Deployment as it
// is now, or nil, and the objects ("Kind name") left alone because someone
// else owns them. Without its Secrets (secretsOK false) the pods could not
// start, so the Deployment is kept as it is until they exist.
func (r *SocketClusterReconciler) applyOwned(ctx context.Context, sc *v1alpha1.SocketCluster, secrets map[string]*corev1.Secret, secretsOK bool) (*appsv1.Deployment, []string, error) {
	owned := []client.Object{
		resources.Service(sc), resources.AdminService(sc), resources.HeadlessService(sc), resources.PodDisruptionBudget(sc),
	}
	if secretsOK {
		owned = append(owned, resources.Deployment(sc, r.DefaultImage, resources.SecretHash(resources.SecretRefs(sc), secrets)))
	}
	var deploy *appsv1.Deployment
	var notOwned []string
	for _, obj := range owned {
		err := r.apply(ctx, sc, obj)
		if errors.Is(err, errNotOwned) {
			notOwned = append(notOwned, obj.GetObjectKind().GroupVersionKind().Kind+" "+obj.GetName())
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("apply %T %s: %w", obj, obj.GetName(), err)
		}
		if d, ok := obj.(*appsv1.Deployment); ok {
			deploy = d
		}
	}
	if !secretsOK {
		deploy = &appsv1.Deployment{}
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: sc.Namespace, Name: sc.Name}, deploy)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, nil, err
		}
		if err != nil || !metav1.IsControlledBy(deploy, sc) {
			deploy = nil
		}
	}
	return deploy, notOwned, nil
}

// readSecrets gets the referenced Secrets by name, and lists the
// "secret/key" references that do not resolve.
func (r *SocketClusterReconciler) readSecrets(ctx context.Context, sc *v1alpha1.SocketCluster) (map[string]*corev1.Secret, []string, error) {
	secrets := map[string]*corev1.Secret{}
	var missing []string
	for _, ref := range resources.SecretRefs(sc) {
		s, seen := secrets[ref.Name]
		if !seen {
			s = &corev1.Secret{}
			if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: sc.Namespace, Name: ref.Name}, s); apierrors.IsNotFound(err) {
				s = nil
			} else if err != nil {
				return nil, nil, err
			}
			secrets[ref.Name] = s
		}
		var ok bool
		if s != nil {
			_, ok = s.Data[ref.Key]
		}
		if !ok {
			missing = append(missing, ref.Name+"/"+ref.Key)
		}
	}
	return secrets, missing, nil
}

// apply server-side applies obj (which the builders fully own) and reads the
// result back into it. It records an event when the object changed.
func (r *SocketClusterReconciler) apply(ctx context.Context, sc *v1alpha1.SocketCluster, obj client.Object) error {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return err
	}
	// Zero values the typed structs cannot omit; applying them would claim
	// fields this operator does not set.
	delete(u, "status")
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "template", "metadata", "creationTimestamp")

	before := obj.DeepCopyObject().(client.Object)
	err = r.Client.Get(ctx, client.ObjectKeyFromObject(obj), before)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	existed := err == nil
	if existed && !metav1.IsControlledBy(before, sc) {
		return errNotOwned
	}
	applied := &unstructured.Unstructured{Object: u}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(applied), client.FieldOwner(resources.ManagerName), client.ForceOwnership); err != nil {
		return err
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(applied.Object, obj); err != nil {
		return err
	}
	kind, log := applied.GetKind(), logf.FromContext(ctx)
	switch {
	case !existed:
		log.Info("created", "kind", kind, "name", obj.GetName())
		r.Recorder.Eventf(sc, obj, corev1.EventTypeNormal, "Created", "Create", "created %s %s", kind, obj.GetName())
	case before.GetResourceVersion() != obj.GetResourceVersion():
		log.Info("updated", "kind", kind, "name", obj.GetName())
		r.Recorder.Eventf(sc, obj, corev1.EventTypeNormal, "Updated", "Update", "updated %s %s", kind, obj.GetName())
	}
	return nil
}

// countConnections sums what the given pods published to Redis.
func (r *SocketClusterReconciler) countConnections(ctx context.Context, sc *v1alpha1.SocketCluster, secrets map[string]*corev1.Secret, pods []corev1.Pod) (int64, error) {
	var password string
	if ref := sc.Spec.Redis.PasswordSecretRef; ref != nil {
		s := secrets[ref.Name]
		if s == nil {
			return 0, fmt.Errorf("redis password Secret %s not found", ref.Name)
		}
		password = string(s.Data[ref.Key])
	}
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Name
	}
	rdb := r.redis.Get(client.ObjectKeyFromObject(sc).String(), sc.Spec.Redis, password)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return connections.Count(ctx, rdb, sc.Spec.Redis.KeyPrefix, names, time.Now())
}

// updateStatus writes the observed state, keeping the last connection count
// when Redis could not be read.
func (r *SocketClusterReconciler) updateStatus(ctx context.Context, sc *v1alpha1.SocketCluster, d *appsv1.Deployment, p conditions.Problems, count int64) error {
	before := sc.DeepCopy()
	st := &sc.Status
	st.ObservedGeneration = sc.Generation
	st.Selector = labels.SelectorFromSet(resources.SelectorLabels(sc)).String()
	if d != nil {
		st.Replicas, st.ReadyReplicas, st.UpdatedReplicas = d.Status.Replicas, d.Status.ReadyReplicas, d.Status.UpdatedReplicas
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name == resources.ContainerName {
				st.CurrentImage = c.Image
			}
		}
	}
	if p.Redis == nil {
		st.Connections = count
		st.ConnectionsObservedAt = &metav1.Time{Time: time.Now()}
	}
	prevDegraded := meta.FindStatusCondition(before.Status.Conditions, v1alpha1.ConditionDegraded)
	for _, c := range []metav1.Condition{conditions.Available(sc, d), conditions.Progressing(sc, d), conditions.Degraded(sc, d, p)} {
		meta.SetStatusCondition(&st.Conditions, c)
	}
	// Tell people when a problem starts or ends, not on every refresh.
	if now := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); prevDegraded == nil || prevDegraded.Reason != now.Reason {
		if now.Status == metav1.ConditionTrue {
			r.Recorder.Eventf(sc, nil, corev1.EventTypeWarning, now.Reason, "Reconcile", "%s", now.Message)
		} else if prevDegraded != nil {
			r.Recorder.Eventf(sc, nil, corev1.EventTypeNormal, "Recovered", "Reconcile", "no longer degraded (was %s)", prevDegraded.Reason)
		}
	}
	if equality.Semantic.DeepEqual(before.Status, sc.Status) {
		return nil
	}
	return r.Client.Status().Patch(ctx, sc, client.MergeFrom(before))
}

// SetupWithManager watches SocketClusters, what they own, and the Secrets
// they reference (by metadata only: the data is read when reconciling).
func (r *SocketClusterReconciler) SetupWithManager(mgr ctrl.Manager) error {
	err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.SocketCluster{}, secretIndex, func(o client.Object) []string {
		var names []string
		for _, ref := range resources.SecretRefs(o.(*v1alpha1.SocketCluster)) {
			names = append(names, ref.Name)
		}
		return names
	})
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		// Not on status changes: every reconcile writes the status.
		For(&v1alpha1.SocketCluster{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.clustersForSecret)).
		Named("socketcluster").
		Complete(r)
}

func (r *SocketClusterReconciler) clustersForSecret(ctx context.Context, secret client.Object) []ctrl.Request {
	list := &v1alpha1.SocketClusterList{}
	if err := r.Client.List(ctx, list, client.InNamespace(secret.GetNamespace()), client.MatchingFields{secretIndex: secret.GetName()}); err != nil {
		logf.FromContext(ctx).Error(err, "cannot list SocketClusters for Secret", "secret", secret.GetName())
		return nil
	}
	reqs := make([]ctrl.Request, len(list.Items))
	for i, sc := range list.Items {
		reqs[i] = ctrl.Request{NamespacedName: types.NamespacedName{Namespace: sc.Namespace, Name: sc.Name}}
	}
	return reqs
}
