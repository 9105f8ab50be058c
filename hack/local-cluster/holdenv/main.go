// Command holdenv runs etcd and kube-apiserver the way envtest does (it makes
// the certificates, the admin user and the kubeconfig) and keeps them up until
// SIGINT or SIGTERM, so that a real kubelet, scheduler and controller-manager
// can join them. Used by hack/local-cluster/up.sh.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// apiserverArgs collects repeated -apiserver-arg key=value flags.
type apiserverArgs []string

func (a *apiserverArgs) String() string     { return strings.Join(*a, ",") }
func (a *apiserverArgs) Set(v string) error { *a = append(*a, v); return nil }

func main() {
	assets := flag.String("assets", "", "folder holding kube-apiserver and etcd")
	kubeconfig := flag.String("kubeconfig-out", "", "where to write the admin kubeconfig")
	listen := flag.String("listen", "127.0.0.1", "address kube-apiserver serves on (a free port is picked)")
	var args apiserverArgs
	flag.Var(&args, "apiserver-arg", "extra kube-apiserver flag as key=value (repeatable); key=- removes an envtest default")
	flag.Parse()
	if *assets == "" || *kubeconfig == "" {
		flag.Usage()
		os.Exit(2)
	}

	env := &envtest.Environment{BinaryAssetsDirectory: *assets}
	server := env.ControlPlane.GetAPIServer()
	port, err := freePort(*listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pick apiserver port:", err)
		os.Exit(1)
	}
	server.SecureServing.Address, server.SecureServing.Port = *listen, port
	apiserver := server.Configure()
	for _, kv := range args {
		k, v, _ := strings.Cut(kv, "=")
		if v == "-" {
			apiserver.Disable(k)
		} else {
			apiserver.Set(k, v)
		}
	}

	start := time.Now()
	if _, err := env.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start control plane:", err)
		os.Exit(1)
	}
	// Written last and renamed into place: its presence means "ready".
	tmp := *kubeconfig + ".tmp"
	err = os.WriteFile(tmp, env.KubeConfig, 0o600)
	if err == nil {
		err = os.Rename(tmp, *kubeconfig)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "write kubeconfig:", err)
		_ = env.Stop()
		os.Exit(1)
	}
	fmt.Printf("control plane up in %s, kubeconfig %s\n", time.Since(start).Round(time.Millisecond), *kubeconfig)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop control plane:", err)
		os.Exit(1)
	}
}

// freePort returns a port that is free on host right now.
func freePort(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	return port, err
}
