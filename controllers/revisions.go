package controllers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/connections"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/controllers/rollout"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// adminCallTimeout bounds one call to a pod's admin API, so that a pod
// that does not answer cannot hold up the reconcile.
const adminCallTimeout = 3 * time.Second

// revisions is what the Deployments of a SocketCluster look like.
type revisions struct {
	// byName are the Deployments this SocketCluster controls.
	byName map[string]*appsv1.Deployment
}

// listRevisions lists the Deployments the SocketCluster controls: the
// Surge one (named like it) and one per revision.
func (r *SocketClusterReconciler) listRevisions(ctx context.Context, sc *v1alpha1.SocketCluster) (revisions, error) {
	list := &appsv1.DeploymentList{}
	if err := r.Client.List(ctx, list, client.InNamespace(sc.Namespace), client.MatchingLabels(resources.SelectorLabels(sc))); err != nil {
		return revisions{}, err
	}
	rev := revisions{byName: map[string]*appsv1.Deployment{}}
	for i := range list.Items {
		if d := &list.Items[i]; metav1.IsControlledBy(d, sc) {
			rev.byName[d.Name] = d
		}
	}
	return rev, nil
}

// activeRevision is the revision the live public Service selects, "" when
// it selects every pod or does not exist yet.
func (r *SocketClusterReconciler) activeRevision(ctx context.Context, sc *v1alpha1.SocketCluster) (string, error) {
	svc := &corev1.Service{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: sc.Namespace, Name: sc.Name}, svc)
	if err != nil || !metav1.IsControlledBy(svc, sc) {
		return "", client.IgnoreNotFound(err)
	}
	return svc.Spec.Selector[resources.LabelRevision], nil
}

// available counts the pods of d that are available at its latest spec,
// 0 while the Deployment controller has not seen that spec.
func available(d *appsv1.Deployment) int32 {
	if d == nil || d.Status.ObservedGeneration < d.Generation {
		return 0
	}
	return d.Status.AvailableReplicas
}

// surge resolves rollout.maxSurge against the replicas, rounding up like
// the Deployment controller.
func surge(sc *v1alpha1.SocketCluster, replicas int32) int32 {
	ms := intstr.FromString("25%")
	if sc.Spec.Rollout.MaxSurge != nil {
		ms = *sc.Spec.Rollout.MaxSurge
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(&ms, int(replicas), true)
	if err != nil || n < 1 {
		return 1
	}
	return int32(n)
}

// planRevisions observes a ReconnectOnce SocketCluster and decides the
// rollout's next step. desired is the desired revision's Deployment (its
// replicas still to be set from the step).
func (r *SocketClusterReconciler) planRevisions(ctx context.Context, sc *v1alpha1.SocketCluster, desired *appsv1.Deployment, rev string,
	revs revisions, pods []corev1.Pod, report *connections.Report) (rollout.Step, []corev1.Pod, error) {
	active, err := r.activeRevision(ctx, sc)
	if err != nil {
		return rollout.Step{}, nil, err
	}
	replicas := ptrValue(sc.Spec.Replicas)
	in := rollout.Input{
		Desired: rev, Replicas: replicas, Surge: surge(sc, replicas), NewReady: available(revs.byName[desired.Name]),
		NewReplicas: replicasOf(revs.byName[desired.Name]),
		Active:      active, Now: time.Now(),
		Deregistration: resources.TimingsFor(sc).PreStopWait, DrainTimeout: sc.Spec.Drain.Timeout.Duration,
	}
	if s := sc.Status.ActiveSince; s != nil && sc.Status.ActiveRevision == active {
		in.ActiveSince = s.Time
	} else {
		in.ActiveSince = in.Now // unknown: wait the whole delay again
	}
	for name := range revs.byName {
		if name != desired.Name {
			in.OldDeployments++
		}
	}
	var old []corev1.Pod
	for _, p := range pods {
		if p.Labels[resources.LabelRevision] == rev {
			continue
		}
		old = append(old, p)
		var s store.ServerStats
		fresh := false
		if report != nil {
			s, fresh = report.Pods[p.Name]
		}
		if !fresh || in.OldConnections < 0 {
			in.OldConnections = -1
			continue
		}
		in.OldConnections += s.Connections
	}
	in.OldPods = len(old)
	// The rollout gate: the old pods' drains, the serving connections.
	var olds, all []scaledown.Pod
	for i := range pods {
		gp := gatePod(&pods[i], report)
		all = append(all, gp)
		if pods[i].Labels[resources.LabelRevision] != rev {
			olds = append(olds, gp)
		}
	}
	in.Drains = rollout.Gate(olds, scaledown.Serving(all), drainGate(sc, 0))
	return rollout.Plan(in), old, nil
}

// drainOld starts the drains of the old pods the rollout gate chose and
// marks each with the start and the serving connections before it.
func (r *SocketClusterReconciler) drainOld(ctx context.Context, sc *v1alpha1.SocketCluster, old []corev1.Pod, st *rollout.Step, token string) {
	log := logf.FromContext(ctx)
	var chosen []corev1.Pod
	for _, p := range old {
		if slices.Contains(st.DrainPods, p.Name) {
			chosen = append(chosen, p)
		}
	}
	draining, err := r.drainPods(ctx, sc, chosen, token, 0, "into revision "+st.Active)
	if err != nil {
		log.Info("cannot start the drain of an old pod", "error", err.Error())
	}
	mark := map[string]any{scaledown.AnnotationChosen: time.Now().UTC().Format(time.RFC3339),
		scaledown.AnnotationConnectionsBefore: strconv.FormatInt(st.Before, 10)}
	for i := range draining {
		if err := r.annotatePod(ctx, &draining[i], mark); err != nil {
			log.Info("cannot record the drain of an old pod", "pod", draining[i].Name, "error", err.Error())
		}
	}
}

// drainPods starts the drain of the pods that do not drain yet, through
// their admin API, sharing drain.clusterRate among them. Their first
// GOAWAY goes after delay: the time the load balancer takes to stop
// sending them devices, 0 when it did already. why ends the event of
// each pod ("into revision x"). It returns the pods that drain (started
// now or before) and why the others could not start.
func (r *SocketClusterReconciler) drainPods(ctx context.Context, sc *v1alpha1.SocketCluster, old []corev1.Pod, token string, delay time.Duration, why string) ([]corev1.Pod, error) {
	var live []corev1.Pod
	for _, p := range old {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			live = append(live, p)
		}
	}
	rate := rollout.PodRate(sc.Spec.Drain.ClusterRate, len(live))
	var errs []error
	var draining []corev1.Pod
	for i := range live {
		p := &live[i]
		api := &adminapi.Client{
			BaseURL: net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(sc.Spec.Listeners.AdminPort))),
			Token:   token, HTTP: r.adminHTTP(),
		}
		cctx, cancel := context.WithTimeout(ctx, adminCallTimeout)
		info, err := api.Server(cctx)
		if err == nil && !info.Draining {
			err = api.DrainAfterAtRate(cctx, delay, rate)
			if err == nil {
				logf.FromContext(ctx).Info("draining", "pod", p.Name, "connections", info.Connections, "rate", rate, "delay", delay.String())
				r.Recorder.Eventf(sc, p, corev1.EventTypeNormal, "Draining", "Drain", "draining pod %s (revision %q, %d connections) %s at %s",
					p.Name, p.Labels[resources.LabelRevision], info.Connections, why, rateText(rate))
			}
		}
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("drain pod %s: %w", p.Name, err))
			continue
		}
		draining = append(draining, *p)
	}
	return draining, errors.Join(errs...)
}

func rateText(rate float64) string {
	if rate == 0 {
		return "the pod's own pace"
	}
	return strconv.FormatFloat(rate, 'f', 1, 64) + " GOAWAYs/s"
}

func (r *SocketClusterReconciler) adminHTTP() *http.Client {
	if r.AdminHTTP != nil {
		return r.AdminHTTP
	}
	return &http.Client{Timeout: adminCallTimeout}
}

func replicasOf(d *appsv1.Deployment) int32 {
	if d == nil {
		return 0
	}
	return ptrValue(d.Spec.Replicas)
}

func ptrValue(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}
