package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

// plugin holds the clients of one invocation.
type plugin struct {
	opts *options
	cfg  *rest.Config
	k8s  client.Client
	cs   kubernetes.Interface
	out  io.Writer
}

func newPlugin(cfg *rest.Config, o *options) (*plugin, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &plugin{opts: o, cfg: cfg, k8s: c, cs: cs}, nil
}

// target is a SocketCluster, its pods (by name) and its API token.
type target struct {
	sc    *v1alpha1.SocketCluster
	pods  []corev1.Pod
	token string
}

// load reads the SocketCluster (the only one of the namespace unless
// named), its pods and its API token.
func (p *plugin) load(ctx context.Context) (*target, error) {
	ns := p.opts.namespace
	sc := &v1alpha1.SocketCluster{}
	if name := p.opts.cluster; name != "" {
		if err := p.k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sc); err != nil {
			return nil, fmt.Errorf("SocketCluster %s/%s: %w", ns, name, err)
		}
	} else {
		var list v1alpha1.SocketClusterList
		if err := p.k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return nil, fmt.Errorf("listing SocketClusters in %s: %w", ns, err)
		}
		switch len(list.Items) {
		case 0:
			return nil, fmt.Errorf("no SocketCluster in namespace %q (use -n)", ns)
		case 1:
			sc = &list.Items[0]
		default:
			var names []string
			for _, s := range list.Items {
				names = append(names, s.Name)
			}
			return nil, fmt.Errorf("namespace %q has %d SocketClusters (%s): name one with -c", ns, len(names), strings.Join(names, ", "))
		}
	}
	var pods corev1.PodList
	if err := p.k8s.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(resources.SelectorLabels(sc))); err != nil {
		return nil, fmt.Errorf("listing the pods of %s: %w", sc.Name, err)
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	ref := resources.APITokenRef(sc)
	var secret corev1.Secret
	if err := p.k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: ref.Name}, &secret); err != nil {
		return nil, fmt.Errorf("reading the API token Secret %s/%s: %w", ns, ref.Name, err)
	}
	token := strings.TrimSpace(string(secret.Data[ref.Key]))
	if token == "" {
		return nil, fmt.Errorf("the API token Secret %s/%s has no key %q", ns, ref.Name, ref.Key)
	}
	return &target{sc: sc, pods: pods.Items, token: token}, nil
}

// adminPort is the pod's container port "admin", else the spec's.
func adminPort(sc *v1alpha1.SocketCluster, pod *corev1.Pod) int32 {
	for _, c := range pod.Spec.Containers {
		for _, port := range c.Ports {
			if c.Name == resources.ContainerName && port.Name == "admin" {
				return port.ContainerPort
			}
		}
	}
	return sc.Spec.Listeners.AdminPort
}

// admin returns a client of the pod's admin API and a function that
// releases what it holds (the port-forward).
func (p *plugin) admin(ctx context.Context, t *target, pod *corev1.Pod) (*adminapi.Client, func(), error) {
	port := adminPort(t.sc, pod)
	addr, stop := "", func() {}
	if p.opts.direct {
		if pod.Status.PodIP == "" {
			return nil, nil, fmt.Errorf("pod %s has no IP yet", pod.Name)
		}
		addr = net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port)))
	} else {
		var err error
		if addr, stop, err = p.forward(ctx, pod, port); err != nil {
			return nil, nil, fmt.Errorf("port-forward to %s:%d: %w (from inside the cluster network, --direct reaches the pod IPs)", pod.Name, port, err)
		}
	}
	return &adminapi.Client{BaseURL: addr, Token: t.token, HTTP: &http.Client{}}, stop, nil
}

// forward opens a port-forward to the pod's port on a free local port,
// the way kubectl port-forward does (SPDY through the API server).
func (p *plugin) forward(ctx context.Context, pod *corev1.Pod, port int32) (string, func(), error) {
	transport, upgrader, err := spdy.RoundTripperFor(p.cfg)
	if err != nil {
		return "", nil, err
	}
	url := p.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
	stopCh, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stopCh, ready, io.Discard, io.Discard)
	if err != nil {
		return "", nil, err
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	var once sync.Once
	stop := func() { once.Do(func() { close(stopCh) }) }
	select {
	case <-ready:
	case err := <-errc:
		return "", nil, err
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		stop()
		return "", nil, fmt.Errorf("no local port: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), stop, nil
}

// podInfo is what one pod's admin API said, or why it said nothing.
type podInfo struct {
	pod  *corev1.Pod
	info adminapi.ServerInfo
	err  error
}

// servers asks every pod with an IP for its connections and drain state,
// in parallel.
func (p *plugin) servers(ctx context.Context, t *target) []podInfo {
	out := make([]podInfo, len(t.pods))
	var wg sync.WaitGroup
	for i := range t.pods {
		out[i].pod = &t.pods[i]
		if t.pods[i].Status.PodIP == "" {
			out[i].err = fmt.Errorf("no IP yet")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, p.opts.timeout)
			defer cancel()
			api, stop, err := p.admin(ctx, t, out[i].pod)
			if err != nil {
				out[i].err = err
				return
			}
			defer stop()
			out[i].info, out[i].err = api.Server(ctx)
		}()
	}
	wg.Wait()
	return out
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
