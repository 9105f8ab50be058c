package controllers

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/autoscale"
	"github.com/socketcluster/socketcluster/controllers/conditions"
	"github.com/socketcluster/socketcluster/controllers/connections"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

// minRebalanceInterval bounds how often connections are shed: the devices
// of one shed must have reconnected, and the pods published their new
// counts, before the next one is decided.
const minRebalanceInterval = 30 * time.Second

// unevenFor (plus drain.jitter) is how long the pods must stay uneven
// before a shed: right after a rollout or a drain the devices are still
// reconnecting and the counts the pods publish (every 5s) lag behind.
const unevenFor = 10 * time.Second

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
		st.LastScaleTime = prev.LastScaleTime
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
// when they are uneven (spec.rebalance; after a scale-up), once no rollout
// runs and every such pod is ready and counted. It records what it saw in
// obs.balance for the Balanced condition.
func (r *SocketClusterReconciler) rebalance(ctx context.Context, sc *v1alpha1.SocketCluster, obs *observation, token string) {
	if !sc.Spec.Rebalance.RebalanceEnabled() {
		return // the condition says why
	}
	if obs.rebalance == nil {
		obs.rebalance = &v1alpha1.RebalanceStatus{}
	}
	st, replicas := obs.rebalance, ptrValue(sc.Spec.Replicas) // the autoscaler's, when it decides
	unknown := func(why string) { obs.balance = &conditions.BalanceReport{Why: why} }
	if obs.report == nil {
		unknown("the pods' connection counts could not be read from Redis")
		return
	}
	if obs.step != nil && obs.step.Phase != v1alpha1.ReasonNoOldRevision {
		unknown("a rollout is under way: its drain moves the devices")
		return
	}
	if obs.scaleDown != nil && obs.scaleDown.Active() {
		unknown("a scale-down drains the pods that go: its drains move the devices")
		return
	}
	d := obs.active
	if d == nil || available(d) < replicas || d.Status.Replicas != replicas {
		unknown(fmt.Sprintf("scaling to %d pods", replicas))
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
			unknown(fmt.Sprintf("pod %s is not ready, drains, or has no fresh connection count", p.Name))
			return
		}
		conns[p.Name], ips[p.Name] = s.Connections, p.Status.PodIP
	}
	th := autoscale.ThresholdsOf(sc.Spec.Rebalance)
	b := autoscale.Measure(conns, th)
	obs.balance = &conditions.BalanceReport{Balance: &b}
	r.balanceEvent(sc, b)
	now := time.Now()
	switch {
	case !b.Uneven:
		st.UnevenSince = nil
	case st.UnevenSince == nil:
		st.UnevenSince = &metav1.Time{Time: now}
	}
	if b.Uneven && now.Sub(st.UnevenSince.Time) < unevenFor+sc.Spec.Drain.Jitter.Duration {
		return // maybe a passing state: devices still reconnecting, counts not yet published
	}
	wait := max(minRebalanceInterval, sc.Spec.Drain.Timeout.Duration+sc.Spec.Drain.Jitter.Duration)
	if (st.RebalancedAt != nil && now.Sub(st.RebalancedAt.Time) < wait) || (st.ShedUntil != nil && now.Before(st.ShedUntil.Time)) {
		return // the last shed has not settled
	}
	shed := autoscale.Rebalance(conns, th)
	if len(shed) == 0 {
		return
	}
	rate := float64(sc.Spec.Rebalance.ShedRate)
	if rate == 0 {
		rate = float64(sc.Spec.Drain.Rate)
	}
	var until time.Time
	for name, sh := range shed {
		refuse := autoscale.ShedTime(sh.Count, rate, sc.Spec.Drain.Timeout.Duration, sc.Spec.Drain.Jitter.Duration, adminapi.MaxShedRefuse)
		req := adminapi.ShedRequest{Count: sh.Count, Target: sh.Target, RefuseForMs: max(refuse.Milliseconds(), 1),
			Rate: float64(sc.Spec.Rebalance.ShedRate)}
		api := &adminapi.Client{BaseURL: net.JoinHostPort(ips[name], strconv.Itoa(int(sc.Spec.Listeners.AdminPort))), Token: token, HTTP: r.adminHTTP()}
		cctx, cancel := context.WithTimeout(ctx, adminCallTimeout)
		res, err := api.ShedWith(cctx, req)
		cancel()
		if err != nil {
			logf.FromContext(ctx).Info("cannot shed connections", "pod", name, "error", err.Error())
			continue
		}
		until = maxTime(until, now.Add(refuse))
		r.Recorder.Eventf(sc, nil, corev1.EventTypeNormal, "Shed", "Rebalance",
			"pod %s sheds %d of its %d connections and refuses new devices while it holds %d or more, for at most %s",
			name, res.Shed, res.Connections, sh.Target, refuse.Round(time.Second))
	}
	st.RebalancedAt = &metav1.Time{Time: now}
	if !until.IsZero() {
		st.ShedUntil = &metav1.Time{Time: until}
	}
}

// balanceEvent tells people when rebalancing starts and when it ends
// (a change of the Balanced condition's reason), not on every reconcile.
func (r *SocketClusterReconciler) balanceEvent(sc *v1alpha1.SocketCluster, b autoscale.Balance) {
	prev := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionBalanced)
	was := prev != nil && prev.Reason == v1alpha1.ReasonRebalancing
	switch {
	case b.Uneven && !was:
		r.Recorder.Eventf(sc, nil, corev1.EventTypeNormal, v1alpha1.ReasonRebalancing, "Rebalance", "uneven pods, %s: the fuller pods shed down to the mean", b)
	case !b.Uneven && was:
		r.Recorder.Eventf(sc, nil, corev1.EventTypeNormal, v1alpha1.ReasonBalanced, "Rebalance", "balanced: %s", b)
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
