package socketserver_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

// After a scale-out from 2 to 4 pods behind a balancer that picks a pod at
// random, the full pods shed. With a target they refuse new devices while
// they hold it, so each shed device is welcomed once, on a new pod, and
// the full pods end exactly at the mean; a shed by count alone (the
// operator's way before targets) has to move every device for the new
// pods to get their share. Both print what they moved:
//
//	go test -race -run TestRebalanceBehindRandomBalancer -v ./socketserver/ | grep REBALANCE
func TestRebalanceBehindRandomBalancer(t *testing.T) {
	const devices, mean = 400, 100
	for _, withTarget := range []bool{true, false} {
		mode := "target"
		if !withTarget {
			mode = "count-only"
		}
		t.Run(mode, func(t *testing.T) {
			r := redistest.Start(t)
			srvs := make([]*socketserver.Server, 4)
			for i := range srvs {
				srvs[i] = startServer(t, redisStore(t, r), fmt.Sprintf("pod-%c", 'a'+i), func(c *socketserver.Config) {
					c.DrainJitter = 200 * time.Millisecond
				})
			}
			var mu sync.Mutex
			behind := 2 // pods the balancer sends devices to
			addrs := func() []string {
				mu.Lock()
				defer mu.Unlock()
				out := make([]string, behind)
				for i := range out {
					out[i] = srvs[i].Addrs().TCP
				}
				return out
			}
			f := newFleet(devices, "tcp", addrs)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			f.run(ctx, &wg)
			defer func() { cancel(); wg.Wait() }()
			f.waitConnected(t)
			counts := func() []int {
				out := make([]int, len(srvs))
				for i, s := range srvs {
					out[i] = s.Connections()
				}
				return out
			}
			eventually(t, "every device on pod-a or pod-b", func() bool { c := counts(); return c[0]+c[1] == devices })
			welcomes := func() int {
				n := 0
				for _, d := range f.devices {
					d.mu.Lock()
					n += d.welcomes
					d.mu.Unlock()
				}
				return n
			}
			before, start := welcomes(), counts()

			mu.Lock()
			behind = 4 // the scale-out: new pods, empty
			mu.Unlock()
			shed := 0
			for i := range 2 {
				req := adminapi.ShedRequest{Count: start[i], Rate: 1000} // down to the emptiest: 0
				if withTarget {
					req = adminapi.ShedRequest{Count: start[i] - mean, Target: mean, RefuseForMs: time.Minute.Milliseconds(), Rate: 1000}
				}
				res, err := adminClient(srvs[i], "").ShedWith(context.Background(), req)
				if err != nil || res.Shed != req.Count {
					t.Fatalf("shed %+v on pod %d: %+v %v", req, i, res, err)
				}
				shed += res.Shed
			}
			// Every shed device is welcomed again somewhere, once.
			eventually(t, "every shed device back", func() bool {
				c := counts()
				return welcomes() == before+shed && c[0]+c[1]+c[2]+c[3] == devices
			})
			f.waitConnected(t)
			after := counts()
			refused := 0
			for _, s := range srvs {
				refused += int(metric(t, s, "socketserver_shed_refused_hellos_total"))
			}
			t.Logf("REBALANCE mode=%s devices=%d pods-before=%v pods-after=%v moved=%d refused-hellos=%d",
				mode, devices, start, after, welcomes()-before, refused)
			if withTarget && (after[0] != mean || after[1] != mean || shed != 2*mean) {
				t.Fatalf("with a target: pods %v after shedding %d, want pod-a and pod-b at %d, %d moved", after, shed, mean, 2*mean)
			}
			for _, d := range f.devices {
				for _, v := range d.violations {
					t.Error(v)
				}
			}
		})
	}
}
