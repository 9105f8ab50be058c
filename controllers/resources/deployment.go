package resources

import (
	"fmt"
	"path"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

const (
	// AnnotationSecretHash on the pod template changes when a referenced
	// Secret changes, which rolls the pods.
	AnnotationSecretHash = "sockets.socketcluster.io/secret-hash"

	// ContainerName is the socketserver container.
	ContainerName = "socketserver"
	// EnvRedisPassword carries the Redis password, so it never shows in args.
	EnvRedisPassword = "SOCKETSERVER_REDIS_PASSWORD"

	// DrainMargin is added to the grace period for the process to exit
	// after the drain and for the kubelet's own delays.
	DrainMargin = 15 * time.Second

	nonRootUID = 65532

	readinessPeriod, readinessFailures = 5, 2
	// ReadinessDetection is how long the kubelet may take to notice a pod
	// that turned unready (and the Service to drop it): the readiness
	// probe's period times its failure threshold.
	ReadinessDetection = readinessPeriod * readinessFailures * time.Second

	deviceKeyDir = "/etc/socketserver/device-key"
	apiTokenDir  = "/etc/socketserver/api-token"
	tlsDir       = "/etc/socketserver/tls"
)

// Deployment runs the socketservers. image is used when spec.image is empty;
// secretHash is SecretHash of the referenced Secrets.
func Deployment(sc *v1alpha1.SocketCluster, image, secretHash string) *appsv1.Deployment {
	spec := &sc.Spec
	if spec.Image != "" {
		image = spec.Image
	}
	podLabels := merge(spec.PodLabels, Labels(sc))
	podAnnotations := merge(spec.PodAnnotations, map[string]string{AnnotationSecretHash: secretHash})

	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: objectMeta(sc, sc.Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: spec.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: SelectorLabels(sc)},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxSurge:       spec.Rollout.MaxSurge,
					MaxUnavailable: spec.Rollout.MaxUnavailable,
				},
			},
			MinReadySeconds: spec.Rollout.MinReadySeconds,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: podAnnotations},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{container(sc, image)},
					Volumes:                       volumes(sc),
					TerminationGracePeriodSeconds: ptr.To(Seconds(TimingsFor(sc).GracePeriod)),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To[int64](nonRootUID),
						RunAsGroup:     ptr.To[int64](nonRootUID),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					// Service links would add an env var per Service of the
					// namespace; the server reads none of them.
					EnableServiceLinks:        ptr.To(false),
					ServiceAccountName:        spec.ServiceAccountName,
					ImagePullSecrets:          spec.ImagePullSecrets,
					NodeSelector:              spec.NodeSelector,
					Tolerations:               spec.Tolerations,
					Affinity:                  spec.Affinity,
					PriorityClassName:         spec.PriorityClassName,
					TopologySpreadConstraints: topologySpread(sc),

					// The server never calls the Kubernetes API: no token
					// for anyone who gets into the container to use.
					AutomountServiceAccountToken: ptr.To(false),
				},
			},
		},
	}
}

func container(sc *v1alpha1.SocketCluster, image string) corev1.Container {
	spec := &sc.Spec
	admin := fmt.Sprint(spec.Listeners.AdminPort)
	// Unready at once, GOAWAYs only after the wait: the load balancer
	// stops sending new connections here before devices are told to leave.
	preStop := []string{"/socketserver", "drain", "--admin-addr=127.0.0.1:" + admin, "--api-token-file=" + apiTokenFile(sc),
		"--delay=" + TimingsFor(sc).PreStopWait.String()}
	env := []corev1.EnvVar{{
		Name:      "POD_NAME",
		ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
	}}
	if r := spec.Redis.PasswordSecretRef; r != nil {
		env = append(env, corev1.EnvVar{
			Name: EnvRedisPassword,
			ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: r.Name},
				Key:                  r.Key,
			}},
		})
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           image,
		ImagePullPolicy: spec.ImagePullPolicy,
		Command:         []string{"/socketserver"},
		Args:            Args(sc),
		Env:             env,
		Ports: append(DevicePorts(sc),
			corev1.ContainerPort{Name: "admin", ContainerPort: spec.Listeners.AdminPort, Protocol: corev1.ProtocolTCP}),
		Resources:      spec.Resources,
		VolumeMounts:   volumeMounts(sc),
		ReadinessProbe: httpProbe("/readyz", readinessPeriod, readinessFailures),
		LivenessProbe:  httpProbe("/healthz", 10, 3),
		// The drain runs before SIGTERM: the pod turns unready, waits for
		// the load balancer, then devices get GOAWAY and move to other pods
		// while this one still serves them.
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: preStop}}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](nonRootUID),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// Args are the socketserver flags (protocol v1, section 5).
func Args(sc *v1alpha1.SocketCluster) []string {
	spec := &sc.Spec
	r := &spec.Redis
	args := []string{
		fmt.Sprintf("--tcp-addr=:%d", spec.Listeners.TCP.Port),
		fmt.Sprintf("--ws-addr=:%d", spec.Listeners.WebSocket.Port),
		fmt.Sprintf("--admin-addr=:%d", spec.Listeners.AdminPort),
		"--redis-addr=" + strings.Join(r.Addresses, ","),
		"--redis-mode=" + string(r.Mode),
		"--redis-prefix=" + r.KeyPrefix,
	}
	if r.MasterName != "" {
		args = append(args, "--redis-master-name="+r.MasterName)
	}
	if r.TLS {
		args = append(args, "--redis-tls")
	}
	args = append(args,
		"--heartbeat-interval="+spec.Heartbeat.Interval.Duration.String(),
		"--heartbeat-timeout="+spec.Heartbeat.Timeout.Duration.String(),
		"--drain-timeout="+spec.Drain.Timeout.Duration.String(),
		fmt.Sprintf("--drain-rate=%d", spec.Drain.Rate),
		"--drain-jitter="+spec.Drain.Jitter.Duration.String(),
		fmt.Sprintf("--max-frame-bytes=%d", spec.MaxFrameBytes),
		fmt.Sprintf("--max-connections=%d", spec.MaxConnectionsPerPod),
		fmt.Sprintf("--max-pending=%d", spec.MaxPendingPerDevice),
	)
	if spec.Auth.InsecureNoAuth {
		args = append(args, "--insecure-no-auth")
	}
	if k := spec.Auth.DeviceKeySecretRef; k != nil {
		args = append(args, "--auth-key-file="+path.Join(deviceKeyDir, k.Key))
	}
	args = append(args, "--api-token-file="+apiTokenFile(sc))
	if spec.Listeners.TLS != nil {
		args = append(args,
			"--tls-cert-file="+path.Join(tlsDir, corev1.TLSCertKey),
			"--tls-key-file="+path.Join(tlsDir, corev1.TLSPrivateKeyKey))
	}
	// Only when off: the server serves SSE by default, and the pods of
	// existing SocketClusters keep their arguments (no roll on upgrade).
	if !SSEEnabled(sc) {
		args = append(args, "--sse-enabled=false")
	}
	// Likewise only when on: the server has no gRPC listener by default.
	if g := spec.Listeners.GRPC; g.Enabled {
		args = append(args, fmt.Sprintf("--grpc-addr=:%d", g.Port))
	}
	if m := spec.Listeners.MQTT; m.Enabled {
		args = append(args, fmt.Sprintf("--mqtt-addr=:%d", m.Port))
	}
	return args
}

// SSEEnabled tells whether the SocketCluster serves Server-Sent Events on its
// WebSocket port (spec.listeners.sse.enabled, true unless set to false).
func SSEEnabled(sc *v1alpha1.SocketCluster) bool {
	return sc.Spec.Listeners.SSE.Enabled == nil || *sc.Spec.Listeners.SSE.Enabled
}

// DevicePorts are the listeners devices connect to, open to everyone (the
// NetworkPolicy admits them from anywhere). Every listener but the admin
// port belongs here. "ws" serves WebSocket and SSE: SSE has no port of its
// own; "grpc" and "mqtt" are there when enabled.
func DevicePorts(sc *v1alpha1.SocketCluster) []corev1.ContainerPort {
	l := &sc.Spec.Listeners
	ports := []corev1.ContainerPort{
		{Name: "tcp", ContainerPort: l.TCP.Port, Protocol: corev1.ProtocolTCP},
		{Name: "ws", ContainerPort: l.WebSocket.Port, Protocol: corev1.ProtocolTCP},
	}
	if l.GRPC.Enabled {
		ports = append(ports, corev1.ContainerPort{Name: "grpc", ContainerPort: l.GRPC.Port, Protocol: corev1.ProtocolTCP})
	}
	if l.MQTT.Enabled {
		ports = append(ports, corev1.ContainerPort{Name: "mqtt", ContainerPort: l.MQTT.Port, Protocol: corev1.ProtocolTCP})
	}
	return ports
}

// devicePortsOfService are the Service ports of DevicePorts, by name.
func devicePortsOfService(sc *v1alpha1.SocketCluster) []corev1.ServicePort {
	var out []corev1.ServicePort
	for _, p := range DevicePorts(sc) {
		out = append(out, corev1.ServicePort{Name: p.Name, Port: p.ContainerPort, TargetPort: intstr.FromString(p.Name), Protocol: p.Protocol})
	}
	return out
}

// apiTokenFile is where the pods read the admin API token; the server
// refuses to start without one.
func apiTokenFile(sc *v1alpha1.SocketCluster) string {
	return path.Join(apiTokenDir, APITokenRef(sc).Key)
}

func httpProbe(p string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: p, Port: intstr.FromString("admin")},
		},
		PeriodSeconds:    period,
		TimeoutSeconds:   2,
		FailureThreshold: failures,
	}
}

// secretVolume mounts the given keys of a Secret as files in dir.
type secretVolume struct {
	volume, secret, dir string
	keys                []string
}

func secretVolumes(sc *v1alpha1.SocketCluster) []secretVolume {
	var out []secretVolume
	if k := sc.Spec.Auth.DeviceKeySecretRef; k != nil {
		out = append(out, secretVolume{"device-key", k.Name, deviceKeyDir, []string{k.Key}})
	}
	k := APITokenRef(sc)
	out = append(out, secretVolume{"api-token", k.Name, apiTokenDir, []string{k.Key}})
	if t := sc.Spec.Listeners.TLS; t != nil {
		out = append(out, secretVolume{"tls", t.SecretName, tlsDir, []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey}})
	}
	return out
}

func volumes(sc *v1alpha1.SocketCluster) []corev1.Volume {
	// The root filesystem is read-only; /tmp stays writable.
	vols := []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	for _, f := range secretVolumes(sc) {
		items := make([]corev1.KeyToPath, len(f.keys))
		for i, k := range f.keys {
			items[i] = corev1.KeyToPath{Key: k, Path: k}
		}
		vols = append(vols, corev1.Volume{Name: f.volume, VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: f.secret, Items: items},
		}})
	}
	return vols
}

func volumeMounts(sc *v1alpha1.SocketCluster) []corev1.VolumeMount {
	mounts := []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}}
	for _, f := range secretVolumes(sc) {
		mounts = append(mounts, corev1.VolumeMount{Name: f.volume, MountPath: f.dir, ReadOnly: true})
	}
	return mounts
}

// topologySpread defaults to spreading over zones and nodes without ever
// leaving a pod unscheduled for it.
func topologySpread(sc *v1alpha1.SocketCluster) []corev1.TopologySpreadConstraint {
	if len(sc.Spec.TopologySpreadConstraints) > 0 {
		return sc.Spec.TopologySpreadConstraints
	}
	var out []corev1.TopologySpreadConstraint
	for _, key := range []string{corev1.LabelTopologyZone, corev1.LabelHostname} {
		out = append(out, corev1.TopologySpreadConstraint{
			MaxSkew:           1,
			TopologyKey:       key,
			WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector:     &metav1.LabelSelector{MatchLabels: SelectorLabels(sc)},
		})
	}
	return out
}
