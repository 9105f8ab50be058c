package controllers

import (
	"context"
	"net"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/autoscale"
	"github.com/socketcluster/socketcluster/controllers/connections"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

// minRebalanceInterval bounds how often connections are shed: the devices
// of one shed must have reconnected, and the pods published their new
// counts, before the next one is decided.
const minRebalanceInterval = 30 * time.Second

// autoscaleStatus is spec.autoscaling's decision for this reconcile.
func (r *SocketClusterReconciler) autoscaleStatus(sc *v1alpha1.SocketCluster, pods []corev1.Pod, report *connections.Report, now time.Time) *v1alpha1.AutoscalingStatus {
	prev := sc.Status.Autoscaling
	in := autoscale.Input{Spec: *sc.Spec.Autoscaling, Current: ptrValue(sc.Spec.Replicas), Now: now}
	if prev != nil {
		in.Current = prev.Replicas
		if prev.LowSince != nil {
			in.LowSince = &prev.LowSince.Time
		}
	}
	if report != nil {
		in.Known, in.Connections = true, report.Connections
		for _, p := range pods {
			if _, ok := report.Pods[p.Name]; !ok && podReady(&p) {
				in.Known = false // a ready pod with no count would be counted as empty
			}
		}
	}
	d := autoscale.Decide(in)
	st := &v1alpha1.AutoscalingStatus{Replicas: d.Replicas, Recommendation: d.Recommendation}
	if prev != nil {
		st.LastScaleTime, st.RebalancedAt = prev.LastScaleTime, prev.RebalancedAt
	}
	if d.LowSince != nil {
		st.LowSince = &metav1.Time{Time: *d.LowSince}
	}
	if prev == nil || prev.Replicas != d.Replicas {
		st.LastScaleTime = &metav1.Time{Time: now}
		r.Recorder.Eventf(sc, nil, corev1.EventTypeNormal, "Scaled", "Autoscale", "%d pods: %s", d.Replicas, d.Message)
	}
	return st
}

// rebalance sheds connections from the fuller pods that serve devices
// when they are uneven (after a scale-up), once no rollout runs and every
// such pod is ready and counted.
func (r *SocketClusterReconciler) rebalance(ctx context.Context, sc *v1alpha1.SocketCluster, obs *observation, token string) {
	as := obs.autoscaling
	if as == nil || obs.report == nil || (obs.step != nil && obs.step.Phase != v1alpha1.ReasonNoOldRevision) {
		return
	}
	if obs.scaleDown != nil && obs.scaleDown.Active() {
		return // its drains move devices already
	}
	d := obs.active
	if d == nil || available(d) < as.Replicas || d.Status.Replicas != as.Replicas {
		return // scaling or rolling: the pods are about to change
	}
	wait := max(minRebalanceInterval, sc.Spec.Drain.Timeout.Duration+sc.Spec.Drain.Jitter.Duration)
	if as.RebalancedAt != nil && time.Since(as.RebalancedAt.Time) < wait {
		return
	}
	active := ""
	if obs.step != nil {
		active = obs.step.Active
	}
	serving := labels.SelectorFromSet(resources.PublicSelectorLabels(sc, active))
	conns := map[string]int64{}
	ips := map[string]string{}
	for _, p := range obs.pods {
		if !serving.Matches(labels.Set(p.Labels)) || p.DeletionTimestamp != nil {
			continue
		}
		s, ok := obs.report.Pods[p.Name]
		if !podReady(&p) || !ok || s.Draining || p.Status.PodIP == "" {
			return // not settled yet
		}
		conns[p.Name], ips[p.Name] = s.Connections, p.Status.PodIP
	}
	shed := autoscale.Rebalance(conns)
	if len(shed) == 0 {
		return
	}
	for name, n := range shed {
		api := &adminapi.Client{BaseURL: net.JoinHostPort(ips[name], strconv.Itoa(int(sc.Spec.Listeners.AdminPort))), Token: token, HTTP: r.adminHTTP()}
		cctx, cancel := context.WithTimeout(ctx, adminCallTimeout)
		res, err := api.Shed(cctx, n)
		cancel()
		if err != nil {
			logf.FromContext(ctx).Info("cannot shed connections", "pod", name, "error", err.Error())
			continue
		}
		r.Recorder.Eventf(sc, nil, corev1.EventTypeNormal, "Rebalancing", "Shed", "pod %s sheds %d of its %d connections onto the emptier pods", name, res.Shed, res.Connections)
	}
	as.RebalancedAt = &metav1.Time{Time: time.Now()}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// apiToken is the admin API token the pods read, "" when its Secret is missing.
func apiToken(sc *v1alpha1.SocketCluster, secrets map[string]*corev1.Secret) string {
	ref := resources.APITokenRef(sc)
	if s := secrets[ref.Name]; s != nil {
		return strings.TrimSpace(string(s.Data[ref.Key]))
	}
	return ""
}
