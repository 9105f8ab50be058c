// Command kubectl-sc is the kubectl plugin of SocketClusters (kubectl sc
// ...): it reads a SocketCluster and its pods with the caller's kubeconfig
// and calls each pod's admin API, through a port-forward or, with
// --direct, at the pod IPs, with the cluster's API token.
//
//	kubectl sc status            pods, revisions, connections, drains, conditions
//	kubectl sc device ID         which pod holds a device, its epoch, seqs, pending
//	kubectl sc drain POD         drain one pod (its devices move to the others)
//	kubectl sc rebalance         move devices from pods above the mean to the others
//	kubectl sc top               connections per pod, refreshed
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

const usage = `kubectl sc: operate SocketClusters.

Usage:
  kubectl sc [flags] status
  kubectl sc [flags] device ID
  kubectl sc [flags] drain POD [--wait=true] [--delete]
  kubectl sc [flags] rebalance [--dry-run]
  kubectl sc [flags] top [--interval 2s] [--count N]

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil))
}

// run is the whole command; connect, when not nil, replaces the
// kubeconfig (tests pass the envtest cluster's).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, connect func(*options) (*plugin, error)) int {
	o := &options{}
	fs := flag.NewFlagSet("kubectl sc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "kubeconfig context")
	fs.StringVar(&o.namespace, "n", "", "namespace (default: the context's)")
	fs.StringVar(&o.namespace, "namespace", "", "namespace (default: the context's)")
	fs.StringVar(&o.cluster, "c", "", "SocketCluster name (default: the only one in the namespace)")
	fs.StringVar(&o.cluster, "cluster", "", "SocketCluster name (default: the only one in the namespace)")
	fs.BoolVar(&o.direct, "direct", false, "reach the pods' admin API at their IPs instead of through a port-forward (from inside the cluster network)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound of each admin API call")
	fs.BoolVar(&o.wait, "wait", true, "drain: wait until the pod holds no connection")
	fs.BoolVar(&o.delete, "delete", false, "drain: delete the pod afterwards, so that the Deployment replaces it")
	fs.BoolVar(&o.dryRun, "dry-run", false, "rebalance: print the plan only")
	fs.DurationVar(&o.interval, "interval", 2*time.Second, "top: refresh interval")
	fs.IntVar(&o.count, "count", 0, "top: refreshes before exiting (0: until interrupted)")
	// Flags may come before or after the command and its arguments, as
	// with kubectl.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) == 0 {
		fs.Usage()
		return 2
	}
	cmd := pos[0]
	need, ok := map[string]int{"status": 0, "device": 1, "drain": 1, "rebalance": 0, "top": 0}[cmd]
	switch {
	case !ok:
		fmt.Fprintf(stderr, "kubectl sc: unknown command %q\n", cmd)
		fs.Usage()
		return 2
	case len(pos)-1 != need:
		fmt.Fprintf(stderr, "kubectl sc: %s takes %d argument(s), got %d\n", cmd, need, len(pos)-1)
		return 2
	}
	if connect == nil {
		connect = fromKubeconfig
	}
	p, err := connect(o)
	if err == nil {
		p.out = stdout
		err = p.dispatch(ctx, cmd, pos[1:])
	}
	if err != nil {
		fmt.Fprintln(stderr, "kubectl sc:", err)
		return 1
	}
	return 0
}

type options struct {
	kubeconfig, context, namespace, cluster string
	direct, wait, delete, dryRun            bool
	timeout, interval                       time.Duration
	count                                   int
}

// fromKubeconfig connects the way kubectl does.
func fromKubeconfig(o *options) (*plugin, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, err
	}
	if o.namespace == "" {
		if o.namespace, _, err = cc.Namespace(); err != nil {
			return nil, err
		}
	}
	return newPlugin(cfg, o)
}

func (p *plugin) dispatch(ctx context.Context, cmd string, args []string) error {
	switch cmd {
	case "status":
		return p.status(ctx)
	case "device":
		return p.device(ctx, args[0])
	case "drain":
		return p.drain(ctx, args[0], p.opts.wait, p.opts.delete)
	case "rebalance":
		return p.rebalance(ctx, p.opts.dryRun)
	default:
		return p.top(ctx, p.opts.interval, p.opts.count)
	}
}
