package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

func (p *plugin) table() *tabwriter.Writer { return tabwriter.NewWriter(p.out, 0, 4, 2, ' ', 0) }

// status prints the SocketCluster, its conditions and every pod.
func (p *plugin) status(ctx context.Context) error {
	t, err := p.load(ctx)
	if err != nil {
		return err
	}
	sc := t.sc
	desired := int32(0)
	if sc.Spec.Replicas != nil {
		desired = *sc.Spec.Replicas
	}
	fmt.Fprintf(p.out, "SocketCluster %s/%s: %d desired, %d ready, %d updated; image %s; %d connections\n",
		sc.Namespace, sc.Name, desired, sc.Status.ReadyReplicas, sc.Status.UpdatedReplicas, orDash(sc.Status.CurrentImage), sc.Status.Connections)
	w := p.table()
	fmt.Fprintln(w, "CONDITION\tSTATUS\tREASON\tMESSAGE")
	for _, c := range sc.Status.Conditions {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, c.Message)
	}
	_ = w.Flush()
	fmt.Fprintln(p.out)
	w = p.table()
	fmt.Fprintln(w, "POD\tREADY\tREVISION\tIP\tCONNECTIONS\tDRAINING")
	for _, s := range p.servers(ctx, t) {
		conns, draining := "-", "-"
		if s.err == nil {
			conns, draining = fmt.Sprint(s.info.Connections), fmt.Sprint(s.info.Draining)
		} else if s.pod.Status.PodIP != "" {
			conns = "error: " + s.err.Error()
		}
		fmt.Fprintf(w, "%s\t%v\t%s\t%s\t%s\t%s\n", s.pod.Name, podReady(s.pod),
			orDash(s.pod.Labels["pod-template-hash"]), orDash(s.pod.Status.PodIP), conns, draining)
	}
	return w.Flush()
}

// device asks the pods, in turn, for the device's session: any pod can
// answer from the shared store.
func (p *plugin) device(ctx context.Context, id string) error {
	t, err := p.load(ctx)
	if err != nil {
		return err
	}
	var last error = fmt.Errorf("no pod of %s has an IP", t.sc.Name)
	for i := range t.pods {
		pod := &t.pods[i]
		if pod.Status.PodIP == "" {
			continue
		}
		d, err := p.deviceFrom(ctx, t, pod, id)
		if adminapi.IsRefused(err) {
			return err // 404 or 400: every pod would say the same
		}
		if err != nil {
			last = err
			continue
		}
		w := p.table()
		fmt.Fprintf(w, "device\t%s\n", d.Device)
		fmt.Fprintf(w, "connected\t%v\n", d.Connected)
		fmt.Fprintf(w, "pod\t%s\n", orDash(d.Server))
		fmt.Fprintf(w, "session epoch\t%d\n", d.SessionEpoch)
		fmt.Fprintf(w, "acked seq\t%d\n", d.AckedSeq)
		fmt.Fprintf(w, "last seq\t%d\n", d.LastSeq)
		fmt.Fprintf(w, "pending\t%d\n", d.Pending)
		if len(d.State) > 0 && string(d.State) != "null" {
			fmt.Fprintf(w, "state\t%s\n", d.State)
		}
		return w.Flush()
	}
	return last
}

func (p *plugin) deviceFrom(ctx context.Context, t *target, pod *corev1.Pod, id string) (adminapi.DeviceInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.timeout)
	defer cancel()
	api, stop, err := p.admin(ctx, t, pod)
	if err != nil {
		return adminapi.DeviceInfo{}, err
	}
	defer stop()
	return api.Device(ctx, id)
}

// drain drains one pod of the cluster: it turns unready and its devices
// move to the others; with del the pod is deleted afterwards, so that the
// Deployment replaces it.
func (p *plugin) drain(ctx context.Context, name string, wait, del bool) error {
	t, err := p.load(ctx)
	if err != nil {
		return err
	}
	var pod *corev1.Pod
	for i := range t.pods {
		if t.pods[i].Name == name {
			pod = &t.pods[i]
		}
	}
	if pod == nil {
		return fmt.Errorf("pod %q is not a pod of SocketCluster %s/%s", name, t.sc.Namespace, t.sc.Name)
	}
	// The call with wait lasts as long as the drain: bound it by the
	// drain timeout, not by --timeout.
	bound := p.opts.timeout
	if wait {
		bound += t.sc.Spec.Drain.Timeout.Duration
	}
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	api, stop, err := p.admin(cctx, t, pod)
	if err != nil {
		return err
	}
	defer stop()
	remaining, err := api.Drain(cctx, wait)
	if err != nil {
		return err
	}
	if wait {
		fmt.Fprintf(p.out, "pod %s drained: %d connections remaining\n", name, remaining)
	} else {
		fmt.Fprintf(p.out, "pod %s draining\n", name)
	}
	if del {
		if err := p.k8s.Delete(ctx, pod, client.Preconditions{UID: &pod.UID}); err != nil {
			return fmt.Errorf("deleting pod %s: %w", name, err)
		}
		fmt.Fprintf(p.out, "pod %s deleted\n", name)
	}
	return nil
}

// shedPlan says how many connections each ready, non-draining pod above
// the mean gives up so that it holds the mean (rounded up); the others
// and the pods the load balancer sends them to take them.
func shedPlan(conns map[string]int) map[string]int {
	if len(conns) == 0 {
		return nil
	}
	total := 0
	for _, c := range conns {
		total += c
	}
	mean := (total + len(conns) - 1) / len(conns)
	plan := map[string]int{}
	for pod, c := range conns {
		if c > mean {
			plan[pod] = c - mean
		}
	}
	return plan
}

// rebalance sheds connections of the pods above the mean.
func (p *plugin) rebalance(ctx context.Context, dryRun bool) error {
	t, err := p.load(ctx)
	if err != nil {
		return err
	}
	conns := map[string]int{}
	pods := map[string]*corev1.Pod{}
	for _, s := range p.servers(ctx, t) {
		if s.err != nil || s.info.Draining || !podReady(s.pod) {
			continue // a pod that drains or is not ready takes no part
		}
		conns[s.pod.Name], pods[s.pod.Name] = s.info.Connections, s.pod
	}
	plan := shedPlan(conns)
	if len(plan) == 0 {
		fmt.Fprintf(p.out, "balanced: %d ready pods, no pod above the mean\n", len(conns))
		return nil
	}
	names := make([]string, 0, len(plan))
	for n := range plan {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if dryRun {
			fmt.Fprintf(p.out, "pod %s: would shed %d of %d connections\n", name, plan[name], conns[name])
			continue
		}
		res, err := p.shed(ctx, t, pods[name], plan[name])
		if err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
		fmt.Fprintf(p.out, "pod %s: shedding %d of %d connections\n", name, res.Shed, res.Connections)
	}
	return nil
}

func (p *plugin) shed(ctx context.Context, t *target, pod *corev1.Pod, n int) (adminapi.ShedStarted, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.timeout)
	defer cancel()
	api, stop, err := p.admin(ctx, t, pod)
	if err != nil {
		return adminapi.ShedStarted{}, err
	}
	defer stop()
	return api.Shed(ctx, n)
}

// top prints the connections per pod every interval, count times (0:
// until interrupted).
func (p *plugin) top(ctx context.Context, interval time.Duration, count int) error {
	clear := isTerminal(p.out)
	for i := 0; count == 0 || i < count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(interval):
			}
		}
		t, err := p.load(ctx)
		if err != nil {
			return err
		}
		if clear {
			fmt.Fprint(p.out, "\033[H\033[2J")
		}
		fmt.Fprintf(p.out, "%s  %s/%s\n", time.Now().Format(time.TimeOnly), t.sc.Namespace, t.sc.Name)
		w := p.table()
		fmt.Fprintln(w, "POD\tCONNECTIONS\tSTATE")
		total := 0
		for _, s := range p.servers(ctx, t) {
			switch {
			case s.err != nil:
				fmt.Fprintf(w, "%s\t-\t%s\n", s.pod.Name, s.err)
			default:
				state := "ready"
				if s.info.Draining {
					state = "draining"
				} else if !podReady(s.pod) {
					state = "not ready"
				}
				total += s.info.Connections
				fmt.Fprintf(w, "%s\t%d\t%s\n", s.pod.Name, s.info.Connections, state)
			}
		}
		fmt.Fprintf(w, "TOTAL\t%d\t\n", total)
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
