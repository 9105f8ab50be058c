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
	def := autoscale.ThresholdsOf(v1alpha1.RebalanceSpec{})
	for _, tc := range []struct {
		name  string
		conns map[string]int64
		th    autoscale.Thresholds
		want  map[string]autoscale.Shed
	}{
		// The fuller pods shed down to the mean and refuse new devices
		// meanwhile, so that the shed ones land on the new pods.
		{"after a scale-up from 2 to 4", map[string]int64{"a": 1000, "b": 1000, "c": 0, "d": 0}, def,
			map[string]autoscale.Shed{"a": {500, 500}, "b": {500, 500}}},
		{"after a scale-up from 4 to 5", map[string]int64{"a": 1000, "b": 1000, "c": 1000, "d": 1000, "e": 0}, def,
			map[string]autoscale.Shed{"a": {200, 800}, "b": {200, 800}, "c": {200, 800}, "d": {200, 800}}},
		{"one pod far above, one far below", map[string]int64{"a": 1600, "b": 1000, "c": 400}, def,
			map[string]autoscale.Shed{"a": {600, 1000}}},
		// The target is the mean rounded up: the pods above it shed, to
		// at most one connection more than the mean.
		{"uneven total", map[string]int64{"a": 101, "b": 0}, def, map[string]autoscale.Shed{"a": {50, 51}}},
		{"even enough", map[string]int64{"a": 1100, "b": 950, "c": 950}, def, nil},
		// 30% above the mean: the full pod sheds its excess, which the
		// refusal keeps from coming back.
		{"one full pod", map[string]int64{"a": 1300, "b": 900, "c": 900, "d": 900}, def,
			map[string]autoscale.Shed{"a": {300, 1000}}},
		{"one full pod within a 40% threshold", map[string]int64{"a": 1300, "b": 900, "c": 900, "d": 900},
			autoscale.Thresholds{Relative: 0.4, Absolute: 10}, nil},
		{"tiny numbers stay", map[string]int64{"a": 12, "b": 0}, def, nil},
		{"tiny numbers move with an absolute threshold of 1", map[string]int64{"a": 12, "b": 0},
			autoscale.Thresholds{Relative: 0.2, Absolute: 1}, map[string]autoscale.Shed{"a": {6, 6}}},
		{"far in percent, not in connections", map[string]int64{"a": 130, "b": 70}, autoscale.Thresholds{Relative: 0.2, Absolute: 50}, nil},
		{"one pod", map[string]int64{"a": 1000}, def, nil},
		{"no pods", nil, def, nil},
	} {
		if got := autoscale.Rebalance(tc.conns, tc.th); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestThresholdsAndMeasure(t *testing.T) {
	if th := autoscale.ThresholdsOf(v1alpha1.RebalanceSpec{RelativeThreshold: 35, AbsoluteThreshold: 100}); th != (autoscale.Thresholds{Relative: 0.35, Absolute: 100}) {
		t.Fatalf("ThresholdsOf: %+v", th)
	}
	b := autoscale.Measure(map[string]int64{"a": 1000, "b": 0}, autoscale.Thresholds{Relative: 0.2, Absolute: 10})
	if b != (autoscale.Balance{Pods: 2, Max: 1000, Min: 0, Mean: 500, Uneven: true}) || b.String() != "max 1000, mean 500, min 0 connections over 2 pods" {
		t.Fatalf("Measure: %+v %q", b, b)
	}
}

func TestShedTime(t *testing.T) {
	for _, tc := range []struct {
		count int
		rate  float64
		want  time.Duration
	}{
		{500, 50, 10*time.Second + 10*time.Second + 5*time.Second}, // 10s of GOAWAYs, 10s jitter
		{500, 0, 48*time.Second + 10*time.Second + 5*time.Second},  // 80% of a 60s drain timeout
		{1_000_000, 1, time.Hour},                                  // bounded
	} {
		if got := autoscale.ShedTime(tc.count, tc.rate, time.Minute, 10*time.Second, time.Hour); got != tc.want {
			t.Errorf("ShedTime(%d, %v): %s, want %s", tc.count, tc.rate, got, tc.want)
		}
	}
}
