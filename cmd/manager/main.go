// Command manager runs the SocketCluster operator.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"

	"github.com/go-logr/logr"
	"github.com/redis/go-redis/v9"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// imageEnv names the socketserver image of SocketClusters without
// spec.image. The operator's own image ships the server, so its Deployment
// sets this to the same image.
const imageEnv = "SOCKETSERVER_IMAGE"

// namespaceEnv names the operator's own namespace (the downward API's
// metadata.namespace): the NetworkPolicies of SocketClusters admit the
// operator's pods there to the admin port.
const namespaceEnv = "OPERATOR_NAMESPACE"

func main() {
	var metricsAddr, probeAddr, watchNamespace, podLabels string
	var leaderElect, secureMetrics, enableHTTP2 bool
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "Address of the Prometheus metrics endpoint; 0 disables it.")
	flag.BoolVar(&secureMetrics, "metrics-secure", true, "Serve metrics over HTTPS, only to callers the API server authenticates (TokenReview) and authorizes for GET on the /metrics URL (SubjectAccessReview). false serves plain HTTP to anyone, for local runs.")
	flag.BoolVar(&enableHTTP2, "enable-http2", false, "Allow HTTP/2 on the metrics endpoint (off: HTTP/2 Rapid Reset and Stream Cancellation, CVE-2023-44487 and CVE-2023-39325).")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader, so that only one of several replicas reconciles.")
	flag.StringVar(&watchNamespace, "watch-namespace", "", "Only manage SocketClusters in this namespace (default: all).")
	flag.StringVar(&podLabels, "operator-pod-labels", "", "Labels of the operator's own pods (k=v,...): the NetworkPolicies of SocketClusters admit them, in the namespace $"+namespaceEnv+", to the admin port. Empty admits every pod of that namespace.")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")
	// Failed Redis reads already show in the status and the reconcile log.
	redis.SetLogger(redisLog{ctrl.Log.WithName("redis").V(1)})

	image := os.Getenv(imageEnv)
	if image == "" {
		log.Info(imageEnv + " must be set to the socketserver image used when spec.image is empty")
		os.Exit(2)
	}

	operator, err := operatorPeer(os.Getenv(namespaceEnv), podLabels)
	if err != nil {
		log.Error(err, "bad --operator-pod-labels")
		os.Exit(2)
	}
	if operator.Namespace == "" {
		log.Info(namespaceEnv + " is not set: the NetworkPolicies of SocketClusters admit no operator pod to the admin port")
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))

	cacheOpts := cache.Options{}
	if watchNamespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{watchNamespace: {}}
	}
	metricsOpts := metricsserver.Options{BindAddress: metricsAddr, SecureServing: secureMetrics}
	if secureMetrics {
		// Kubernetes authenticates and authorizes every scrape: the caller
		// needs GET on the non-resource URL /metrics (the metrics-reader
		// ClusterRole). The certificate is self-signed unless one is mounted.
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	if !enableHTTP2 {
		metricsOpts.TLSOpts = append(metricsOpts.TLSOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOpts,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "socketcluster-operator.socketcluster.io",
		// The process exits right after, so the next leader need not wait
		// for the lease to expire.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "cannot create the manager")
		os.Exit(1)
	}
	r := &controllers.SocketClusterReconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		Recorder:     mgr.GetEventRecorder(controllers.ControllerName),
		DefaultImage: image,
		Operator:     operator,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		log.Error(err, "cannot set up the controller")
		os.Exit(1)
	}
	utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	utilruntime.Must(mgr.AddReadyzCheck("readyz", healthz.Ping))

	log.Info("starting", "image", image, "watchNamespace", watchNamespace, "secureMetrics", secureMetrics)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

// operatorPeer is where the operator's pods run, from its namespace and
// the value of --operator-pod-labels.
func operatorPeer(namespace, podLabels string) (resources.Operator, error) {
	op := resources.Operator{Namespace: namespace}
	if podLabels == "" {
		return op, nil
	}
	set, err := labels.ConvertSelectorToLabelsMap(podLabels)
	if err != nil {
		return resources.Operator{}, err
	}
	op.PodLabels = set
	return op, nil
}

// redisLog sends go-redis's internal messages to the operator's logger.
type redisLog struct{ log logr.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Info(fmt.Sprintf(format, v...))
}
