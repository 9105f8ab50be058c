package autoscale_test

import (
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/autoscale"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func spec() v1alpha1.AutoscalingSpec {
	return v1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 10, TargetConnectionsPerPod: 1000,
		ScaleDownStabilization: metav1.Duration{Duration: 5 * time.Minute}}
}

func at(d time.Duration) *time.Time { t := t0.Add(d); return &t }

func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       autoscale.Input
		replicas int32
		lowSince *time.Time
	}{
		{"scale up at once", autoscale.Input{Current: 3, Connections: 4001, Known: true}, 5, nil},
		{"exactly the target per pod", autoscale.Input{Current: 3, Connections: 4000, Known: true}, 4, nil},
		{"never above max", autoscale.Input{Current: 3, Connections: 1e9, Known: true}, 10, nil},
		{"never below min", autoscale.Input{Current: 2, Connections: 0, Known: true}, 2, nil},
		{"a lower recommendation starts the window", autoscale.Input{Current: 5, Connections: 1500, Known: true}, 5, at(0)},
		{"within the window: kept", autoscale.Input{Current: 5, Connections: 1500, Known: true, LowSince: at(-4 * time.Minute)}, 5, at(-4 * time.Minute)},
		{"after the window: down", autoscale.Input{Current: 5, Connections: 1500, Known: true, LowSince: at(-5 * time.Minute)}, 2, nil},
		{"back up ends the window", autoscale.Input{Current: 5, Connections: 4500, Known: true, LowSince: at(-4 * time.Minute)}, 5, nil},
		{"unknown counts keep the replicas", autoscale.Input{Current: 5, Connections: 0, Known: false}, 5, nil},
		{"bounds changed: clamped at once", autoscale.Input{Current: 12, Known: false}, 10, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.Spec, in.Now = spec(), t0
			d := autoscale.Decide(in)
			if d.Replicas != tc.replicas || !reflect.DeepEqual(d.LowSince, tc.lowSince) || d.Message == "" {
				t.Fatalf("got %d (low since %v, %q), want %d (low since %v)", d.Replicas, d.LowSince, d.Message, tc.replicas, tc.lowSince)
			}
		})
	}
}

func TestRebalance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conns map[string]int64
		want  map[string]int
	}{
		// Every device of a full pod has to move for the balancer to give
		// the new pods their share.
		{"after a scale-up from 2 to 4", map[string]int64{"a": 1000, "b": 1000, "c": 0, "d": 0}, map[string]int{"a": 1000, "b": 1000}},
		{"after a scale-up from 4 to 5", map[string]int64{"a": 1000, "b": 1000, "c": 1000, "d": 1000, "e": 0}, map[string]int{"a": 1000, "b": 1000, "c": 1000, "d": 1000}},
		// 1200 + 600 shed spread over 3 pods: 600 each, 1000 in the end.
		{"one pod far above, one far below", map[string]int64{"a": 1600, "b": 1000, "c": 400}, map[string]int{"a": 1200, "b": 600}},
		{"even enough", map[string]int64{"a": 1100, "b": 950, "c": 950}, nil},
		{"one full pod, none much emptier", map[string]int64{"a": 1300, "b": 900, "c": 900, "d": 900}, nil},
		{"tiny numbers stay", map[string]int64{"a": 12, "b": 0}, nil},
		{"one pod", map[string]int64{"a": 1000}, nil},
	} {
		if got := autoscale.Rebalance(tc.conns); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
