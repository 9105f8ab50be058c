// Package controllers reconciles SocketClusters into the objects that run them.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
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
	"github.com/socketcluster/socketcluster/controllers/rollout"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
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
	// Operator is where the operator runs: its NetworkPolicies admit it to
	// the admin port.
	Operator resources.Operator
	// AdminHTTP calls the pods' admin API (drains); nil uses a client
	// with a short timeout.
	AdminHTTP *http.Client

	redis connections.Clients // one per SocketCluster, for the status refresh
}

// +kubebuilder:rbac:groups=sockets.socketcluster.io,resources=socketclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=sockets.socketcluster.io,resources=socketclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=sockets.socketcluster.io,resources=socketclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=pods,verbs=list;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile applies the owned objects and refreshes the status.
func (r *SocketClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	log := logf.FromContext(ctx)
	sc := &v1alpha1.SocketCluster{}
	// From the API server, not the cache: the status carries state (the
	// autoscaler's replicas and window, the active revision) that a cache
	// lagging behind the last status write would roll back, e.g. scale a
	// Deployment down from the autoscaler's 5 pods to spec.replicas.
	if err := r.APIReader.Get(ctx, req.NamespacedName, sc); err != nil {
		if apierrors.IsNotFound(err) {
			r.redis.Forget(req.String())
			forgetConditions(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !sc.DeletionTimestamp.IsZero() {
		r.redis.Forget(req.String())
		forgetConditions(req.NamespacedName)
		return ctrl.Result{}, nil // the garbage collector removes what it owns
	}

	// Every exit from here on writes the status, so that an error shows as
	// Degraded with its reason instead of a status that looks fine. (Not
	// when the operator stops: its context is gone, and so is the error.)
	var obs observation
	defer func() {
		if ctx.Err() != nil {
			return
		}
		serr := r.updateStatus(ctx, sc, &obs, err)
		if serr != nil && !apierrors.IsNotFound(serr) { // NotFound: deleted meanwhile
			res, err = ctrl.Result{}, errors.Join(err, fmt.Errorf("update status: %w", serr))
		}
	}()

	tokenConflict, err := r.ensureAPIToken(ctx, sc)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("API token Secret: %w", err)
	}
	secrets, missing, err := r.readSecrets(ctx, sc)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("read Secrets: %w", err)
	}
	pods := &corev1.PodList{}
	if err := r.APIReader.List(ctx, pods, client.InNamespace(sc.Namespace), client.MatchingLabels(resources.SelectorLabels(sc))); err != nil {
		return ctrl.Result{}, fmt.Errorf("list pods: %w", err)
	}
	obs.pods = pods.Items
	report, err := r.readStats(ctx, sc, secrets, pods.Items)
	if err != nil {
		log.Info("cannot read server stats from Redis", "error", err.Error())
		obs.problems.Redis = err
	} else {
		obs.report = &report
		r.updateDeletionCosts(ctx, pods.Items, &report)
	}
	obs.rebalance = sc.Status.Rebalance.DeepCopy()
	if sc.Spec.Autoscaling != nil {
		obs.autoscaling = r.autoscaleStatus(sc, pods.Items, obs.report, time.Now())
		// In memory only: the Deployments, the rollout and the conditions
		// follow the autoscaler's replicas instead of spec.replicas.
		sc.Spec.Replicas = &obs.autoscaling.Replicas
	}
	// A fall of the replicas drains the pods it removes first: the
	// Deployment keeps them (in memory again) until they are empty.
	if len(missing) == 0 && tokenConflict == "" {
		if obs.scaleDown, err = r.scaleDown(ctx, sc, &obs, apiToken(sc, secrets)); err != nil {
			return ctrl.Result{}, err
		}
	}
	// Without its Secrets the pods could not start, so the Deployments are
	// kept as they are until they exist.
	notOwned, applyErr := r.applyOwned(ctx, sc, secrets, len(missing) == 0 && tokenConflict == "", &obs)
	if tokenConflict == "" {
		obs.apiTokenSecret = resources.APITokenRef(sc).Name
	} else {
		notOwned = append([]string{tokenConflict}, notOwned...)
	}
	obs.problems.MissingSecrets, obs.problems.NotOwned, obs.problems.ApplyFailed = missing, notOwned, applyErr
	if applyErr == nil {
		r.rebalance(ctx, sc, &obs, apiToken(sc, secrets))
	}
	obs.complete = true
	if applyErr != nil {
		return ctrl.Result{}, applyErr // retried with backoff; the status says what failed
	}
	next := StatusInterval
	if st := obs.step; st != nil && st.RequeueAfter > 0 {
		next = min(next, st.RequeueAfter) // a rollout waits on time
	}
	if sd := obs.scaleDown; sd != nil && sd.RequeueAfter > 0 {
		next = min(next, sd.RequeueAfter) // a scale-down drain is polled
	}
	if rb := obs.rebalance; rb != nil && rb.UnevenSince != nil {
		// A shed is due once the pods stayed uneven long enough.
		next = min(next, max(time.Until(rb.UnevenSince.Add(unevenFor+sc.Spec.Drain.Jitter.Duration)), time.Second))
	}
	if as := obs.autoscaling; as != nil && as.LowSince != nil {
		// The scale-down is due when the stabilization window ends.
		due := time.Until(as.LowSince.Add(sc.Spec.Autoscaling.ScaleDownStabilization.Duration))
		next = min(next, max(due, time.Second))
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// observation is what a reconcile saw, for the status.
type observation struct {
	// complete is set when the reconcile looked at everything; otherwise
	// only Degraded is updated, with the error that stopped it.
	complete bool
	// deploy is the Deployment of the pod template the spec asks for;
	// active the one serving devices (the same, except while a
	// ReconnectOnce rollout has not switched yet).
	deploy, active *appsv1.Deployment
	// step is where a ReconnectOnce rollout is; nil with Surge.
	step *rollout.Step
	// scaleDown is where a drain before a scale-down is; nil when none
	// could run (a rollout moves the pods).
	scaleDown *scaledown.Step
	// autoscaling is spec.autoscaling's decision, nil without it.
	autoscaling *v1alpha1.AutoscalingStatus
	// activeSince is when the Service switched to step.Active, if now.
	activeSince *metav1.Time
	pods        []corev1.Pod
	problems    conditions.Problems
	// report is nil when Redis could not be read.
	report *connections.Report
	// rebalance is the rebalancer's state, nil when it is off.
	rebalance *v1alpha1.RebalanceStatus
	// balance is what the rebalancer saw, nil when it did not look.
	balance *conditions.BalanceReport
	// apiTokenSecret is the Secret the pods read the API token from, empty
	// until known to be usable.
	apiTokenSecret string
}

// ensureAPIToken creates the API token Secret of a SocketCluster that names
// none, once: an existing one is never rewritten, since backends use its
// token. It returns "Secret <name>" when a Secret of that name belongs to
// someone else (its token is then not used).
func (r *SocketClusterReconciler) ensureAPIToken(ctx context.Context, sc *v1alpha1.SocketCluster) (conflict string, err error) {
	if !resources.GeneratesAPIToken(sc) {
		return "", nil
	}
	name := resources.GeneratedAPITokenSecretName(sc)
	existing := &metav1.PartialObjectMetadata{}
	existing.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	err = r.APIReader.Get(ctx, types.NamespacedName{Namespace: sc.Namespace, Name: name}, existing)
	switch {
	case err == nil && metav1.IsControlledBy(existing, sc):
		return "", nil
	case err == nil:
		return "Secret " + name, nil
	case !apierrors.IsNotFound(err):
		return "", err
	}
	token, err := resources.NewAPIToken()
	if err != nil {
		return "", err
	}
	secret := resources.APITokenSecret(sc, token)
	if err := r.Client.Create(ctx, secret, client.FieldOwner(resources.ManagerName)); err != nil {
		return "", err // AlreadyExists included: the next reconcile looks at it
	}
	logf.FromContext(ctx).Info("created", "kind", "Secret", "name", name)
	r.Recorder.Eventf(sc, secret, corev1.EventTypeNormal, "Created", "Create", "generated the admin API token in Secret %s (key %s)", name, resources.APITokenKey)
	return "", nil
}

// applyOwned applies every owned object and records in obs the
// Deployments as they are now (or nil) and the rollout's step. It returns
// the objects ("Kind name") left alone because someone else owns them, and
// the errors of the objects that could not be applied (the others are
// applied all the same). Without its Secrets (secretsOK false) no
// Deployment is applied and the Service keeps its pods.
func (r *SocketClusterReconciler) applyOwned(ctx context.Context, sc *v1alpha1.SocketCluster, secrets map[string]*corev1.Secret, secretsOK bool, obs *observation) ([]string, error) {
	owned := []client.Object{resources.AdminService(sc), resources.HeadlessService(sc), resources.PodDisruptionBudget(sc)}
	if resources.NetworkPolicyEnabled(sc) {
		owned = append(owned, resources.NetworkPolicy(sc, r.Operator))
	}
	revs, err := r.listRevisions(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("list Deployments: %w", err)
	}
	hash := resources.SecretHash(resources.SecretRefs(sc), secrets)
	var desired *appsv1.Deployment
	var oldPods []corev1.Pod
	serviceRev := ""
	if resources.ReconnectOnce(sc) {
		d, rev := resources.RevisionDeployment(sc, r.DefaultImage, hash, 0)
		desired = d
		if secretsOK {
			step, old, err := r.planRevisions(ctx, sc, d, rev, revs, obs.pods, obs.report)
			if err != nil {
				return nil, fmt.Errorf("plan the rollout: %w", err)
			}
			d.Spec.Replicas = &step.NewReplicas
			obs.step, oldPods, serviceRev = &step, old, step.Active
			if step.Switched {
				obs.activeSince = &metav1.Time{Time: time.Now()}
			}
		} else if serviceRev, err = r.activeRevision(ctx, sc); err != nil {
			return nil, fmt.Errorf("get Service: %w", err)
		}
	} else {
		desired = resources.Deployment(sc, r.DefaultImage, hash)
	}
	// The Service goes first (it exists as soon as any Deployment does);
	// its selector follows the rollout's step, which switches it only once
	// the new revision is ready in full.
	owned = append([]client.Object{resources.Service(sc, serviceRev)}, owned...)
	if secretsOK {
		owned = append(owned, desired)
	}

	var notOwned []string
	var errs []error
	applied := map[string]*appsv1.Deployment{}
	for _, obj := range owned {
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		err := r.apply(ctx, sc, obj)
		switch {
		case errors.Is(err, errNotOwned):
			notOwned = append(notOwned, kind+" "+obj.GetName())
		case err != nil:
			errs = append(errs, fmt.Errorf("apply %s %s: %w", kind, obj.GetName(), err))
		default:
			if d, ok := obj.(*appsv1.Deployment); ok {
				applied[d.Name] = d
			}
		}
	}
	if !resources.NetworkPolicyEnabled(sc) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: sc.Namespace, Name: sc.Name}}
		if err := r.deleteOwned(ctx, sc, np, "NetworkPolicy"); err != nil {
			errs = append(errs, fmt.Errorf("delete NetworkPolicy %s: %w", np.Name, err))
		}
	}
	// Not applied: report the one that runs, if this SocketCluster's.
	deployment := func(name string) *appsv1.Deployment {
		if d := applied[name]; d != nil {
			return d
		}
		return revs.byName[name]
	}
	obs.deploy = deployment(desired.Name)
	obs.active = obs.deploy
	if st := obs.step; st != nil && st.Active != desired.Labels[resources.LabelRevision] {
		obs.active = deployment(activeDeploymentName(sc, st.Active))
	}

	if len(errs) == 0 {
		errs = append(errs, r.retireOld(ctx, sc, desired.Name, revs, obs, oldPods, secrets))
	}
	return notOwned, errors.Join(errs...)
}

// activeDeploymentName is the Deployment of the revision the Service
// selects: the Surge one when it selects every pod.
func activeDeploymentName(sc *v1alpha1.SocketCluster, revision string) string {
	if revision == "" {
		return sc.Name
	}
	return resources.RevisionDeploymentName(sc, revision)
}

// retireOld drains the old revision's pods and deletes its Deployments
// when the rollout's step says so. With Surge, Deployments of revisions
// left by an earlier ReconnectOnce go once the Surge Deployment is
// available in full (their pods drain as they terminate).
func (r *SocketClusterReconciler) retireOld(ctx context.Context, sc *v1alpha1.SocketCluster, keep string, revs revisions,
	obs *observation, oldPods []corev1.Pod, secrets map[string]*corev1.Secret) error {
	deleteOld := false
	if st := obs.step; st != nil {
		if len(st.DrainPods) > 0 {
			// The next reconcile (in a few seconds) tries again what failed.
			r.drainOld(ctx, sc, oldPods, st, apiToken(sc, secrets))
		}
		if st.Phase == v1alpha1.ReasonDevicesNotReturning {
			if c := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDraining); c == nil || c.Reason != st.Phase {
				r.Recorder.Eventf(sc, nil, corev1.EventTypeWarning, st.Phase, "Rollout", "%s", st.Message)
			}
		}
		deleteOld = st.DeleteOld
	} else {
		deleteOld = obs.deploy != nil && available(obs.deploy) >= ptrValue(sc.Spec.Replicas)
	}
	if !deleteOld {
		return nil
	}
	var errs []error
	for name, d := range revs.byName {
		if name == keep {
			continue
		}
		if err := r.deleteOwned(ctx, sc, d, "Deployment"); err != nil {
			errs = append(errs, fmt.Errorf("delete Deployment %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// deleteOwned deletes obj (named, of the given kind) if it exists and this
// SocketCluster controls it.
func (r *SocketClusterReconciler) deleteOwned(ctx context.Context, sc *v1alpha1.SocketCluster, obj client.Object, kind string) error {
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(obj, sc) {
		return nil
	}
	uid := obj.GetUID()
	if err := r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}); err != nil {
		return client.IgnoreNotFound(err)
	}
	logf.FromContext(ctx).Info("deleted", "kind", kind, "name", obj.GetName())
	r.Recorder.Eventf(sc, obj, corev1.EventTypeNormal, "Deleted", "Delete", "deleted %s %s", kind, obj.GetName())
	return nil
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

// readStats summarizes what the given pods published to Redis.
func (r *SocketClusterReconciler) readStats(ctx context.Context, sc *v1alpha1.SocketCluster, secrets map[string]*corev1.Secret, pods []corev1.Pod) (connections.Report, error) {
	var password string
	if ref := sc.Spec.Redis.PasswordSecretRef; ref != nil {
		s := secrets[ref.Name]
		if s == nil {
			return connections.Report{}, fmt.Errorf("redis password Secret %s not found", ref.Name)
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
	return connections.Read(ctx, rdb, sc.Spec.Redis.KeyPrefix, names, time.Now())
}

// updateStatus writes what the reconcile observed, keeping the last
// connection count when Redis could not be read. After a reconcile that
// stopped on reconcileErr, only Degraded changes (to say why), and what was
// not looked at keeps its last value.
func (r *SocketClusterReconciler) updateStatus(ctx context.Context, sc *v1alpha1.SocketCluster, obs *observation, reconcileErr error) error {
	before := sc.DeepCopy()
	st := &sc.Status
	st.ObservedGeneration = sc.Generation
	st.Selector = labels.SelectorFromSet(resources.SelectorLabels(sc)).String()
	if obs.apiTokenSecret != "" {
		st.APITokenSecretName = obs.apiTokenSecret
	}
	p := obs.problems
	var conds []metav1.Condition
	if obs.complete {
		if d := obs.active; d != nil {
			st.Replicas, st.ReadyReplicas = d.Status.Replicas, d.Status.ReadyReplicas
			for _, c := range d.Spec.Template.Spec.Containers {
				if c.Name == resources.ContainerName {
					st.CurrentImage = c.Image
				}
			}
		}
		if d := obs.deploy; d != nil {
			st.UpdatedReplicas = d.Status.UpdatedReplicas
		}
		if step := obs.step; step != nil {
			// The scale subresource (kubectl scale, HPA) counts the pods
			// that serve devices.
			st.Selector = labels.SelectorFromSet(resources.PublicSelectorLabels(sc, step.Active)).String()
			if step.Active != st.ActiveRevision || st.ActiveSince == nil || obs.activeSince != nil {
				st.ActiveSince = obs.activeSince
				if st.ActiveSince == nil {
					st.ActiveSince = &metav1.Time{Time: time.Now()}
				}
			}
			st.ActiveRevision = step.Active
		} else {
			st.ActiveRevision, st.ActiveSince = "", nil
		}
		var store *conditions.StoreReport
		if rep := obs.report; rep != nil {
			st.Connections = rep.Connections
			st.ConnectionsObservedAt = &metav1.Time{Time: time.Now()}
			store = &conditions.StoreReport{Servers: rep.Servers, Warnings: rep.StoreWarnings}
		}
		st.Pods = podStatuses(obs.pods, obs.report)
		st.Autoscaling = obs.autoscaling
		st.Rebalance = obs.rebalance
		conds = append(conds, conditions.Available(sc, obs.active), conditions.Progressing(sc, obs.deploy, obs.step),
			conditions.Draining(sc, obs.step, obs.scaleDown), conditions.StoreDurable(sc, store), conditions.Balanced(sc, obs.balance))
	} else {
		p.Error = reconcileErr
	}
	conds = append(conds, conditions.Degraded(sc, obs.deploy, p), conditions.TimingsSafe(sc))
	prevDegraded := meta.FindStatusCondition(before.Status.Conditions, v1alpha1.ConditionDegraded)
	prevTimings := meta.FindStatusCondition(before.Status.Conditions, v1alpha1.ConditionTimingsSafe)
	for _, c := range conds {
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
	// A risky timing is warned about once per change of what is risky.
	if now := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionTimingsSafe); now.Status == metav1.ConditionFalse &&
		(prevTimings == nil || prevTimings.Message != now.Message) {
		r.Recorder.Eventf(sc, nil, corev1.EventTypeWarning, now.Reason, "Validate", "%s", now.Message)
	}
	if !equality.Semantic.DeepEqual(before.Status, sc.Status) {
		if err := r.Client.Status().Patch(ctx, sc, client.MergeFrom(before)); err != nil {
			return err
		}
	}
	RecordConditions(sc)
	return nil
}

// updateDeletionCosts keeps each pod's pod-deletion-cost near its
// connection count, so that a scale-down deletes (and drains) the least
// loaded pods. A pod without fresh stats keeps its cost, and so does a pod
// chosen by a scale-down (the lowest). Failures are logged: the next
// reconcile tries again.
func (r *SocketClusterReconciler) updateDeletionCosts(ctx context.Context, pods []corev1.Pod, report *connections.Report) {
	for i := range pods {
		p := &pods[i]
		s, ok := report.Pods[p.Name]
		if _, chosen := p.Annotations[scaledown.AnnotationChosen]; !ok || chosen || p.DeletionTimestamp != nil {
			continue
		}
		want := resources.DeletionCost(s.Connections)
		if !resources.DeletionCostStale(p.Annotations[resources.AnnotationPodDeletionCost], want) {
			continue
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, resources.AnnotationPodDeletionCost, want)
		if err := r.Client.Patch(ctx, p, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil && !apierrors.IsNotFound(err) {
			logf.FromContext(ctx).Info("cannot set the pod-deletion-cost", "pod", p.Name, "error", err.Error())
		}
	}
}

// podStatuses lists the pods by name with their revision and, when Redis
// was read, what each published.
func podStatuses(pods []corev1.Pod, report *connections.Report) []v1alpha1.PodStatus {
	out := make([]v1alpha1.PodStatus, 0, len(pods))
	for _, p := range pods {
		ps := v1alpha1.PodStatus{Name: p.Name, Revision: p.Labels[resources.LabelRevision]}
		if report != nil {
			if s, ok := report.Pods[p.Name]; ok {
				ps.Connections, ps.Draining = &s.Connections, s.Draining
			}
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b v1alpha1.PodStatus) int { return strings.Compare(a.Name, b.Name) })
	if len(out) == 0 {
		return nil
	}
	return out
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
		Owns(&networkingv1.NetworkPolicy{}).
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
