package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/connections"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
)

// scaleDown drains the pods a fall of the replicas removes before the
// Deployment loses them: it holds sc.Spec.Replicas (in memory, like the
// autoscaler) at the serving Deployment's replicas until they are empty.
// It returns the step taken, nil when no scale-down can run (a rollout
// moves the pods, or the Deployment does not exist yet).
func (r *SocketClusterReconciler) scaleDown(ctx context.Context, sc *v1alpha1.SocketCluster, obs *observation, token string) (*scaledown.Step, error) {
	revs, err := r.listRevisions(ctx, sc)
	if err != nil || len(revs.byName) != 1 {
		return nil, err // a rollout runs (or none exists): it sizes the pods
	}
	active := ""
	if resources.ReconnectOnce(sc) {
		if active, err = r.activeRevision(ctx, sc); err != nil {
			return nil, err
		}
	}
	d := revs.byName[activeDeploymentName(sc, active)]
	if d == nil || d.Status.UpdatedReplicas < d.Status.Replicas {
		return nil, nil // a Surge rolling update replaces the pods meanwhile
	}
	serving := labels.SelectorFromSet(resources.PublicSelectorLabels(sc, active))
	// Unlike a terminating pod, a drained one stays in the Service until
	// its readiness probe fails; then the load balancer takes the preStop
	// wait to stop sending it devices. Its first GOAWAY waits for both.
	deregistration := resources.ReadinessDetection + resources.TimingsFor(sc).PreStopWait
	g := drainGate(sc, deregistration)
	in := scaledown.Input{Want: ptrValue(sc.Spec.Replicas), Current: replicasOf(d), Now: g.Now,
		DrainTimeout: g.DrainTimeout, ResumeWindow: g.ResumeWindow, Threshold: g.Threshold, ResumedAt: g.ResumedAt}
	if rb := obs.rebalance; rb != nil && rb.ShedUntil != nil {
		in.ShedUntil = rb.ShedUntil.Time
	}
	pods := map[string]*corev1.Pod{}
	for i := range obs.pods {
		p := &obs.pods[i]
		if !serving.Matches(labels.Set(p.Labels)) || p.DeletionTimestamp != nil {
			continue
		}
		pods[p.Name] = p
		in.Pods = append(in.Pods, observedPod(p, obs))
	}
	step := scaledown.Decide(in)

	log := logf.FromContext(ctx)
	for _, name := range step.Choose {
		if err := r.annotatePod(ctx, pods[name], map[string]any{scaledown.AnnotationChosen: scaledown.Chosen, resources.AnnotationPodDeletionCost: scaledown.LowestDeletionCost}); err != nil {
			return nil, fmt.Errorf("choose pod %s for the scale-down: %w", name, err)
		}
		log.Info("chosen for the scale-down", "pod", name)
	}
	for _, name := range step.Unchoose {
		cost := any(nil)
		if obs.report != nil {
			if s, ok := obs.report.Pods[name]; ok {
				cost = resources.DeletionCost(s.Connections)
			}
		}
		if err := r.annotatePod(ctx, pods[name], map[string]any{scaledown.AnnotationChosen: nil, resources.AnnotationPodDeletionCost: cost}); err != nil {
			return nil, fmt.Errorf("give pod %s back: %w", name, err)
		}
	}
	for _, name := range step.Delete {
		p := pods[name]
		uid := p.UID
		if err := r.Client.Delete(ctx, p, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
			return nil, fmt.Errorf("replace drained pod %s: %w", name, err)
		}
		r.Recorder.Eventf(sc, p, corev1.EventTypeNormal, "Replaced", "Delete", "deleted pod %s, drained for a scale-down that is no longer wanted: the ReplicaSet replaces it", name)
	}
	if name := step.Drain; name != "" {
		why := fmt.Sprintf("to scale down from %d to %d pods", in.Current, in.Want)
		if _, err := r.drainPods(ctx, sc, []corev1.Pod{*pods[name]}, token, deregistration, why); err != nil {
			// Tried again on the next reconcile; the Deployment keeps the
			// pod meanwhile, and the Draining condition says why.
			log.Info("cannot start the scale-down drain", "error", err.Error())
			step.Message = fmt.Sprintf("scaling down from %d to %d pods: cannot start the drain of pod %s: %v", in.Current, in.Want, name, err)
		} else if err := r.annotatePod(ctx, pods[name], map[string]any{
			scaledown.AnnotationChosen:            time.Now().UTC().Format(time.RFC3339),
			scaledown.AnnotationConnectionsBefore: strconv.FormatInt(step.Before, 10),
		}); err != nil {
			return nil, fmt.Errorf("record the drain of pod %s: %w", name, err)
		}
	}
	if step.Paused() {
		if c := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDraining); c == nil || c.Reason != step.Phase {
			r.Recorder.Eventf(sc, nil, corev1.EventTypeWarning, step.Phase, "ScaleDown", "%s", step.Message)
		}
	}
	sc.Spec.Replicas = &step.Replicas
	return &step, nil
}

// drainGate is the gate of drains one after another (rollout.resumeThreshold
// and resumeWindow) for pods whose first GOAWAY waits deregistration.
func drainGate(sc *v1alpha1.SocketCluster, deregistration time.Duration) scaledown.Gate {
	g := scaledown.Gate{Now: time.Now(), DrainTimeout: deregistration + sc.Spec.Drain.Timeout.Duration,
		ResumeWindow: deregistration + sc.Spec.Drain.Timeout.Duration + sc.Spec.Drain.Jitter.Duration + scaledown.ResumeGrace,
		Threshold:    scaledown.DefaultThreshold}
	if w := sc.Spec.Rollout.ResumeWindow; w != nil {
		g.ResumeWindow = w.Duration
	}
	if t := sc.Spec.Rollout.ResumeThreshold; t != nil {
		g.Threshold = float64(*t) / 100
	}
	if v, ok := sc.Annotations[scaledown.AnnotationResume]; ok {
		g.ResumedAt, _ = time.Parse(time.RFC3339, v)
	}
	return g
}

// observedPod is what a gated drain needs of a pod.
func observedPod(p *corev1.Pod, obs *observation) scaledown.Pod { return gatePod(p, obs.report) }

func gatePod(p *corev1.Pod, report *connections.Report) scaledown.Pod {
	sp := scaledown.Pod{Name: p.Name, Ready: podReady(p), Connections: -1}
	if report != nil {
		if s, ok := report.Pods[p.Name]; ok {
			sp.Connections = s.Connections
		}
	}
	v, ok := p.Annotations[scaledown.AnnotationChosen]
	sp.Chosen = ok
	if t, err := time.Parse(time.RFC3339, v); ok && err == nil {
		sp.DrainStarted = t
		sp.Before, _ = strconv.ParseInt(p.Annotations[scaledown.AnnotationConnectionsBefore], 10, 64)
	}
	return sp
}

// annotatePod merge-patches the pod's annotations (nil removes one).
func (r *SocketClusterReconciler) annotatePod(ctx context.Context, p *corev1.Pod, annotations map[string]any) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	if err := r.Client.Patch(ctx, p, client.RawPatch(types.MergePatchType, patch)); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
