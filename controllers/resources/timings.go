package resources

import (
	"math"
	"time"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// Every timing that depends on the load balancer is derived here, from the
// spec alone, so that the Deployment, the Service, the TimingsSafe
// condition and the docs agree (docs/load-balancers.md explains each).

// Default preStop waits: how long a terminating pod, already unready,
// keeps serving while its load balancer stops sending it new connections.
const (
	// The AWS Load Balancer Controller takes about 2 minutes to stop routing
	// to a deregistered target, whatever the deregistration delay
	// (aws-load-balancer-controller issues 2366 and 3270).
	PreStopWaitAWSNLB = 130 * time.Second
	// GKE's health checks (8s interval, 3 failures) plus propagation.
	PreStopWaitGKE = 30 * time.Second
	// Azure's probes (5s interval, 2 failures) plus propagation.
	PreStopWaitAzure = 20 * time.Second
	// No cloud load balancer: kube-proxy drops the unready pod from its
	// endpoints within seconds.
	PreStopWaitGeneric = 5 * time.Second
)

// Idle timeouts of the balancers: a flow with no packet for that long is
// dropped (0: none known).
const (
	IdleTimeoutAWSNLB = 350 * time.Second
	// The Azure preset sets the idle timeout (AzureIdleTimeoutMinutes)
	// between these bounds.
	AzureIdleTimeoutMin = 4 * time.Minute
	AzureIdleTimeoutMax = 100 * time.Minute
	// GKE: the VPC's connection tracking forgets an idle established TCP
	// connection after 10 minutes.
	IdleTimeoutGKE = 10 * time.Minute
)

// AWSPreStopWaitMin is the shortest preStop wait that covers the AWS Load
// Balancer Controller's deregistration in practice; below it the
// TimingsSafe condition warns.
const AWSPreStopWaitMin = 120 * time.Second

// Timings are the durations derived from a SocketCluster's spec.
type Timings struct {
	// PreStopWait is the wait before the first GOAWAY.
	PreStopWait time.Duration
	// GracePeriod is the pods' terminationGracePeriodSeconds, in whole seconds.
	GracePeriod time.Duration
	// DeregistrationDelay is the AWS target group's (aws-nlb only, else 0).
	DeregistrationDelay time.Duration
	// IdleTimeout is the balancer's idle timeout, 0 if none is known.
	IdleTimeout time.Duration
}

// Provider is the SocketCluster's load balancer preset, "" for none.
func Provider(sc *v1alpha1.SocketCluster) v1alpha1.LoadBalancerProvider {
	if lb := sc.Spec.Service.LoadBalancer; lb != nil {
		return lb.Provider
	}
	return ""
}

// DefaultPreStopWait is the preStop wait of a provider ("" for none).
func DefaultPreStopWait(p v1alpha1.LoadBalancerProvider) time.Duration {
	switch p {
	case v1alpha1.AWSNLB:
		return PreStopWaitAWSNLB
	case v1alpha1.GKE:
		return PreStopWaitGKE
	case v1alpha1.Azure:
		return PreStopWaitAzure
	}
	return PreStopWaitGeneric
}

// TimingsFor derives the timings of sc.
func TimingsFor(sc *v1alpha1.SocketCluster) Timings {
	d := &sc.Spec.Drain
	p := Provider(sc)
	t := Timings{PreStopWait: DefaultPreStopWait(p)}
	if d.PreStopWait != nil {
		t.PreStopWait = d.PreStopWait.Duration
	}
	t.GracePeriod = ceilSeconds(t.PreStopWait + d.Timeout.Duration + DrainMargin)
	switch p {
	case v1alpha1.AWSNLB:
		t.IdleTimeout = IdleTimeoutAWSNLB
		t.DeregistrationDelay = t.GracePeriod
		if d.DeregistrationDelay != nil {
			t.DeregistrationDelay = ceilSeconds(d.DeregistrationDelay.Duration)
		}
	case v1alpha1.GKE:
		t.IdleTimeout = IdleTimeoutGKE
	case v1alpha1.Azure:
		t.IdleTimeout = time.Duration(AzureIdleTimeoutMinutes(sc)) * time.Minute
	}
	return t
}

// AzureIdleTimeoutMinutes is the TCP idle timeout the Azure preset asks
// for: the heartbeat timeout rounded up to whole minutes, within Azure's
// 4 to 100 minutes. A healthy device pings every heartbeat interval, well
// within it; a silent one is dropped by the server first.
func AzureIdleTimeoutMinutes(sc *v1alpha1.SocketCluster) int64 {
	m := int64(math.Ceil(sc.Spec.Heartbeat.Timeout.Minutes()))
	return min(max(m, int64(AzureIdleTimeoutMin/time.Minute)), int64(AzureIdleTimeoutMax/time.Minute))
}

func ceilSeconds(d time.Duration) time.Duration {
	return time.Duration(math.Ceil(d.Seconds())) * time.Second
}

// Seconds is d in whole seconds, rounded up.
func Seconds(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }
