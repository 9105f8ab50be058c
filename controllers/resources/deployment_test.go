package resources_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("want 1 container, got %d", n)
	}
	return d.Spec.Template.Spec.Containers[0]
}

func TestDeploymentDefaults(t *testing.T) {
	sc := defaulted(t, minimal)
	d := resources.Deployment(sc, "socketcluster/socketcluster:v1", "hash1")

	if d.Name != "edge" || d.Namespace != "prod" {
		t.Errorf("name %s/%s", d.Namespace, d.Name)
	}
	assertOwned(t, d.OwnerReferences, sc)
	if *d.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *d.Spec.Replicas)
	}
	sel := map[string]string{"app.kubernetes.io/name": "socketserver", "app.kubernetes.io/instance": "edge"}
	if !reflect.DeepEqual(d.Spec.Selector.MatchLabels, sel) {
		t.Errorf("selector %v", d.Spec.Selector.MatchLabels)
	}
	ru := d.Spec.Strategy.RollingUpdate
	if *ru.MaxSurge != intstr.FromString("25%") || *ru.MaxUnavailable != intstr.FromInt32(0) {
		t.Errorf("rolling update %v/%v, want 25%%/0: capacity must never drop", ru.MaxSurge, ru.MaxUnavailable)
	}
	if d.Spec.MinReadySeconds != 10 {
		t.Errorf("minReadySeconds %d", d.Spec.MinReadySeconds)
	}
	pod := d.Spec.Template
	if pod.Labels["app.kubernetes.io/managed-by"] != "socketcluster-operator" || pod.Labels["app.kubernetes.io/instance"] != "edge" {
		t.Errorf("pod labels %v", pod.Labels)
	}
	if pod.Annotations[resources.AnnotationSecretHash] != "hash1" {
		t.Errorf("secret hash annotation %v", pod.Annotations)
	}
	if g := *pod.Spec.TerminationGracePeriodSeconds; g != 5+60+15 {
		t.Errorf("grace %d, want the generic preStop wait 5 + drain 60 + 15", g)
	}

	c := container(t, d)
	if c.Image != "socketcluster/socketcluster:v1" {
		t.Errorf("image %q, want the operator's own", c.Image)
	}
	if !reflect.DeepEqual(c.Command, []string{"/socketserver"}) {
		t.Errorf("command %v", c.Command)
	}
	want := []string{
		"--tcp-addr=:7000", "--ws-addr=:8080", "--admin-addr=:9090",
		"--redis-addr=redis:6379", "--redis-mode=standalone", "--redis-prefix=scp",
		"--heartbeat-interval=15s", "--heartbeat-timeout=45s",
		"--drain-timeout=1m0s", "--drain-rate=0", "--drain-jitter=10s",
		"--max-frame-bytes=65536", "--max-connections=0", "--max-pending=10000",
		"--auth-key-file=/etc/socketserver/device-key/key",
		"--api-token-file=/etc/socketserver/api-token/token",
	}
	if !reflect.DeepEqual(c.Args, want) {
		t.Errorf("args\n got %q\nwant %q", c.Args, want)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if !reflect.DeepEqual(ports, map[string]int32{"tcp": 7000, "ws": 8080, "admin": 9090}) {
		t.Errorf("ports %v", ports)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "POD_NAME" || c.Env[0].ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("env %+v, want only POD_NAME from the downward API", c.Env)
	}
	if !reflect.DeepEqual(c.Lifecycle.PreStop.Exec.Command, []string{"/socketserver", "drain", "--admin-addr=127.0.0.1:9090", "--api-token-file=/etc/socketserver/api-token/token", "--delay=5s"}) {
		t.Errorf("preStop %v, want the drain authenticated with the generated token", c.Lifecycle.PreStop.Exec.Command)
	}
	// Without apiTokenSecretRef the pods mount the Secret the operator generates.
	var tokenVolume *corev1.SecretVolumeSource
	for _, v := range pod.Spec.Volumes {
		if v.Name == "api-token" {
			tokenVolume = v.Secret
		}
	}
	if tokenVolume == nil || tokenVolume.SecretName != "edge-api-token" ||
		!reflect.DeepEqual(tokenVolume.Items, []corev1.KeyToPath{{Key: "token", Path: "token"}}) {
		t.Errorf("api token volume %+v, want the generated Secret edge-api-token", tokenVolume)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.Name == "api-token" && m.MountPath == "/etc/socketserver/api-token" && m.ReadOnly)
	}
	if !mounted {
		t.Errorf("mounts %+v lack the api token", c.VolumeMounts)
	}
}

func TestPodsHaveNoServiceAccountToken(t *testing.T) {
	for _, manifest := range []string{minimal, minimal + "  serviceAccountName: edge\n"} {
		pod := resources.Deployment(defaulted(t, manifest), "img", "").Spec.Template.Spec
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Errorf("serviceAccountName %q: automountServiceAccountToken %v, want false", pod.ServiceAccountName, pod.AutomountServiceAccountToken)
		}
	}
}

func TestProbesAndSecurityContext(t *testing.T) {
	d := resources.Deployment(defaulted(t, minimal), "img", "")
	c := container(t, d)
	for name, p := range map[string]*corev1.Probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port != intstr.FromString("admin") {
			t.Errorf("probe %s: %+v", name, p)
		}
	}
	s := c.SecurityContext
	if !*s.RunAsNonRoot || *s.RunAsUser != 65532 || !*s.ReadOnlyRootFilesystem || *s.AllowPrivilegeEscalation ||
		!reflect.DeepEqual(s.Capabilities.Drop, []corev1.Capability{"ALL"}) || s.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container security context %+v", s)
	}
	ps := d.Spec.Template.Spec.SecurityContext
	if !*ps.RunAsNonRoot || *ps.RunAsUser != 65532 || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v", ps)
	}
}

func TestDeploymentFullSpec(t *testing.T) {
	sc := defaulted(t, `
metadata: {name: edge, namespace: prod}
spec:
  replicas: 0
  image: registry.example/socketserver:2
  podLabels: {team: iot, app.kubernetes.io/instance: hijack}
  podAnnotations: {a: b, sockets.socketcluster.io/secret-hash: user}
  listeners: {tcp: {port: 7443}, websocket: {port: 443}, sse: {enabled: false}, adminPort: 9000, tls: {secretName: edge-tls}}
  redis:
    mode: sentinel
    masterName: mymaster
    addresses: [s1:26379, s2:26379]
    passwordSecretRef: {name: redis, key: password}
    keyPrefix: edge
    tls: true
  auth:
    deviceKeySecretRef: {name: device-key, key: hs256}
    apiTokenSecretRef: {name: api, key: token}
  heartbeat: {interval: 20s, timeout: 1m}
  drain: {timeout: 2m, rate: 50, jitter: 5s, preStopWait: 1.5s}
  maxFrameBytes: 1024
  maxConnectionsPerPod: 100000
  maxPendingPerDevice: 50
  rollout: {maxSurge: 1, maxUnavailable: 10%, minReadySeconds: 0}
`)
	d := resources.Deployment(sc, "ignored", "h")
	c := container(t, d)
	if c.Image != "registry.example/socketserver:2" {
		t.Errorf("image %q: spec.image must win", c.Image)
	}
	if *d.Spec.Replicas != 0 {
		t.Errorf("replicas %d, want 0", *d.Spec.Replicas)
	}
	want := []string{
		"--tcp-addr=:7443", "--ws-addr=:443", "--admin-addr=:9000",
		"--redis-addr=s1:26379,s2:26379", "--redis-mode=sentinel", "--redis-prefix=edge",
		"--redis-master-name=mymaster", "--redis-tls",
		"--heartbeat-interval=20s", "--heartbeat-timeout=1m0s",
		"--drain-timeout=2m0s", "--drain-rate=50", "--drain-jitter=5s",
		"--max-frame-bytes=1024", "--max-connections=100000", "--max-pending=50",
		"--auth-key-file=/etc/socketserver/device-key/hs256",
		"--api-token-file=/etc/socketserver/api-token/token",
		"--tls-cert-file=/etc/socketserver/tls/tls.crt", "--tls-key-file=/etc/socketserver/tls/tls.key",
		"--sse-enabled=false",
	}
	if !reflect.DeepEqual(c.Args, want) {
		t.Errorf("args\n got %q\nwant %q", c.Args, want)
	}
	if !reflect.DeepEqual(c.Lifecycle.PreStop.Exec.Command, []string{"/socketserver", "drain", "--admin-addr=127.0.0.1:9000", "--api-token-file=/etc/socketserver/api-token/token", "--delay=1.5s"}) {
		t.Errorf("preStop %v", c.Lifecycle.PreStop.Exec.Command)
	}
	var pw *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == resources.EnvRedisPassword {
			pw = &c.Env[i]
		}
	}
	if pw == nil || pw.Value != "" || pw.ValueFrom.SecretKeyRef.Name != "redis" || pw.ValueFrom.SecretKeyRef.Key != "password" {
		t.Errorf("redis password env %+v, want a secretKeyRef", pw)
	}
	// 1.5s + 120s + 15s = 136.5s, rounded up.
	if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 137 {
		t.Errorf("grace %d, want 137", g)
	}
	ru := d.Spec.Strategy.RollingUpdate
	if *ru.MaxSurge != intstr.FromInt32(1) || *ru.MaxUnavailable != intstr.FromString("10%") || d.Spec.MinReadySeconds != 0 {
		t.Errorf("rollout %v %v %d", ru.MaxSurge, ru.MaxUnavailable, d.Spec.MinReadySeconds)
	}
	pod := d.Spec.Template
	if pod.Labels["team"] != "iot" || pod.Labels["app.kubernetes.io/instance"] != "edge" {
		t.Errorf("pod labels %v: user labels are added but cannot change the selector", pod.Labels)
	}
	if pod.Annotations["a"] != "b" || pod.Annotations[resources.AnnotationSecretHash] != "h" {
		t.Errorf("pod annotations %v", pod.Annotations)
	}

	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	wantMounts := map[string]string{"tmp": "/tmp", "device-key": "/etc/socketserver/device-key", "api-token": "/etc/socketserver/api-token", "tls": "/etc/socketserver/tls"}
	if !reflect.DeepEqual(mounts, wantMounts) {
		t.Errorf("mounts %v", mounts)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == "tls" && (v.Secret.SecretName != "edge-tls" || len(v.Secret.Items) != 2) {
			t.Errorf("tls volume %+v", v.Secret)
		}
		if v.Name == "device-key" && (v.Secret.SecretName != "device-key" || v.Secret.Items[0].Key != "hs256") {
			t.Errorf("device key volume %+v", v.Secret)
		}
	}
}

func TestInsecureNoAuth(t *testing.T) {
	sc := defaulted(t, `
metadata: {name: dev}
spec:
  redis: {addresses: ["redis:6379"]}
  auth: {insecureNoAuth: true}
`)
	args := container(t, resources.Deployment(sc, "img", "")).Args
	if !slices.Contains(args, "--insecure-no-auth") {
		t.Errorf("args %v", args)
	}
	// Devices without auth do not open the admin API.
	if !slices.Contains(args, "--api-token-file=/etc/socketserver/api-token/token") || slices.Contains(args, "--insecure-no-api-auth") {
		t.Errorf("args %v: the admin API must keep its token", args)
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--auth-key-file") {
			t.Errorf("unexpected %s", a)
		}
	}
}

// SSE is on unless spec.listeners.sse.enabled is false; only then is the
// flag passed, so the pods of SocketClusters that do not set it keep their
// arguments. It shares the WebSocket port: no port of its own.
func TestSSE(t *testing.T) {
	for _, tc := range []struct {
		name, listeners string
		enabled         bool
	}{
		{"default", "", true},
		{"enabled", "  listeners: {sse: {enabled: true}}\n", true},
		{"empty", "  listeners: {sse: {}}\n", true},
		{"disabled", "  listeners: {sse: {enabled: false}}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := defaulted(t, minimal+tc.listeners)
			if got := resources.SSEEnabled(sc); got != tc.enabled {
				t.Errorf("SSEEnabled %v, want %v", got, tc.enabled)
			}
			c := container(t, resources.Deployment(sc, "img", ""))
			var sse []string
			for _, a := range c.Args {
				if strings.HasPrefix(a, "--sse-enabled") {
					sse = append(sse, a)
				}
			}
			want := []string(nil)
			if !tc.enabled {
				want = []string{"--sse-enabled=false"}
			}
			if !reflect.DeepEqual(sse, want) {
				t.Errorf("SSE args %q, want %q (all args %q)", sse, want, c.Args)
			}
			var names []string
			for _, p := range c.Ports {
				names = append(names, p.Name)
			}
			if !reflect.DeepEqual(names, []string{"tcp", "ws", "admin"}) {
				t.Errorf("ports %v: SSE is served on the ws port", names)
			}
		})
	}
}

func TestTopologySpread(t *testing.T) {
	sc := defaulted(t, minimal)
	got := resources.Deployment(sc, "img", "").Spec.Template.Spec.TopologySpreadConstraints
	if len(got) != 2 || got[0].TopologyKey != corev1.LabelTopologyZone || got[1].TopologyKey != corev1.LabelHostname {
		t.Fatalf("default spread %+v", got)
	}
	for _, c := range got {
		if c.WhenUnsatisfiable != corev1.ScheduleAnyway || c.MaxSkew != 1 ||
			!reflect.DeepEqual(c.LabelSelector.MatchLabels, resources.SelectorLabels(sc)) {
			t.Errorf("constraint %+v", c)
		}
	}

	own := []corev1.TopologySpreadConstraint{{MaxSkew: 2, TopologyKey: "rack", WhenUnsatisfiable: corev1.DoNotSchedule}}
	sc.Spec.TopologySpreadConstraints = own
	if got := resources.Deployment(sc, "img", "").Spec.Template.Spec.TopologySpreadConstraints; !reflect.DeepEqual(got, own) {
		t.Errorf("user constraints replaced: %+v", got)
	}
}

func assertOwned(t *testing.T, refs []metav1.OwnerReference, sc *v1alpha1.SocketCluster) {
	t.Helper()
	if len(refs) != 1 {
		t.Fatalf("owner references %+v", refs)
	}
	r := refs[0]
	if r.APIVersion != "sockets.socketcluster.io/v1alpha1" || r.Kind != "SocketCluster" || r.Name != sc.Name || r.UID != sc.UID ||
		!*r.Controller || !*r.BlockOwnerDeletion {
		t.Errorf("owner reference %+v", r)
	}
}

// gRPC and MQTT are off unless enabled: only then do the pods get their
// --X-addr and port, which the public and headless Services (and so the
// NetworkPolicy's device ports) carry too.
func TestOptionalListeners(t *testing.T) {
	for _, tc := range []struct {
		name, listener, listeners string
		want                      []string // the listener's args
		port                      int32    // 0: no port of that name
	}{
		{"grpc default", "grpc", "", nil, 0},
		{"grpc disabled", "grpc", "  listeners: {grpc: {enabled: false, port: 7100}}\n", nil, 0},
		{"grpc enabled", "grpc", "  listeners: {grpc: {enabled: true}}\n", []string{"--grpc-addr=:7001"}, 7001},
		{"grpc port", "grpc", "  listeners: {grpc: {enabled: true, port: 50051}}\n", []string{"--grpc-addr=:50051"}, 50051},
		{"mqtt default", "mqtt", "", nil, 0},
		{"mqtt enabled", "mqtt", "  listeners: {mqtt: {enabled: true}}\n", []string{"--mqtt-addr=:1883"}, 1883},
		{"mqtt port", "mqtt", "  listeners: {mqtt: {enabled: true, port: 8883}}\n", []string{"--mqtt-addr=:8883"}, 8883},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := defaulted(t, minimal+tc.listeners)
			c := container(t, resources.Deployment(sc, "img", ""))
			var got []string
			for _, a := range c.Args {
				if strings.HasPrefix(a, "--"+tc.listener) {
					got = append(got, a)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s args %q, want %q", tc.listener, got, tc.want)
			}
			cports := map[string]int32{}
			for _, p := range c.Ports {
				cports[p.Name] = p.ContainerPort
			}
			for what, svc := range map[string]*corev1.Service{"service": resources.Service(sc, ""), "headless": resources.HeadlessService(sc)} {
				ports := map[string]int32{}
				for _, p := range svc.Spec.Ports {
					ports[p.Name] = p.Port
					if p.TargetPort.String() != p.Name {
						t.Errorf("%s port %s targets %s", what, p.Name, p.TargetPort.String())
					}
				}
				if ports[tc.listener] != tc.port || ports["tcp"] == 0 || ports["ws"] == 0 {
					t.Errorf("%s ports %v, want %s %d next to tcp and ws", what, ports, tc.listener, tc.port)
				}
			}
			if cports[tc.listener] != tc.port {
				t.Errorf("container ports %v, want %s %d", cports, tc.listener, tc.port)
			}
		})
	}
}
