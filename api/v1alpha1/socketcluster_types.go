package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// SocketClusterSpec describes a cluster of socketservers sharing one Redis.
//
// Every field has a default (set by the API server) or is optional, except
// redis.addresses and the device key (see auth).
// +kubebuilder:validation:XValidation:rule="self.listeners.tcp.port != self.listeners.websocket.port && self.listeners.tcp.port != self.listeners.adminPort && self.listeners.websocket.port != self.listeners.adminPort",message="listeners.tcp.port, listeners.websocket.port and listeners.adminPort must all be different",fieldPath=.listeners
// +kubebuilder:validation:XValidation:rule="!has(self.listeners.grpc) || !has(self.listeners.grpc.enabled) || !self.listeners.grpc.enabled || !has(self.listeners.grpc.port) || (self.listeners.grpc.port != self.listeners.tcp.port && self.listeners.grpc.port != self.listeners.websocket.port && self.listeners.grpc.port != self.listeners.adminPort)",message="listeners.grpc.port must differ from listeners.tcp.port, listeners.websocket.port and listeners.adminPort",fieldPath=.listeners
// +kubebuilder:validation:XValidation:rule="!has(self.listeners.mqtt) || !has(self.listeners.mqtt.enabled) || !self.listeners.mqtt.enabled || !has(self.listeners.mqtt.port) || (self.listeners.mqtt.port != self.listeners.tcp.port && self.listeners.mqtt.port != self.listeners.websocket.port && self.listeners.mqtt.port != self.listeners.adminPort && (!has(self.listeners.grpc) || !has(self.listeners.grpc.enabled) || !self.listeners.grpc.enabled || !has(self.listeners.grpc.port) || self.listeners.grpc.port != self.listeners.mqtt.port))",message="listeners.mqtt.port must differ from the ports of the other listeners (tcp, websocket, grpc) and listeners.adminPort",fieldPath=.listeners
// +kubebuilder:validation:XValidation:rule="duration(self.heartbeat.timeout) > duration(self.heartbeat.interval)",message="heartbeat.timeout must be longer than heartbeat.interval, or healthy devices get disconnected",fieldPath=.heartbeat.timeout
// +kubebuilder:validation:XValidation:rule="(has(self.drain.preStopWait) ? duration(self.drain.preStopWait) : !has(self.service.loadBalancer) ? duration('5s') : self.service.loadBalancer.provider == 'aws-nlb' ? duration('130s') : self.service.loadBalancer.provider == 'gke' ? duration('30s') : self.service.loadBalancer.provider == 'azure' ? duration('20s') : duration('5s')) + duration(self.drain.timeout) <= duration('3585s')",message="drain.preStopWait (default by load balancer: aws-nlb 130s, gke 30s, azure 20s, none 5s) + drain.timeout + 15s becomes the pods' terminationGracePeriodSeconds, which must not exceed 3600s: shorten drain.timeout or drain.preStopWait",fieldPath=.drain
// +kubebuilder:validation:XValidation:rule="!has(self.service.loadBalancer) || self.service.loadBalancer.provider != 'aws-nlb' || duration(self.heartbeat.interval) < duration('350s')",message="with service.loadBalancer.provider aws-nlb, heartbeat.interval must be below 350s: the NLB drops a TCP flow that is idle for 350s",fieldPath=.heartbeat.interval
// +kubebuilder:validation:XValidation:rule="!has(self.service.loadBalancer) || self.service.loadBalancer.provider != 'azure' || duration(self.heartbeat.interval) < duration('100m')",message="with service.loadBalancer.provider azure, heartbeat.interval must be below 100m, the longest TCP idle timeout an Azure load balancer can be given",fieldPath=.heartbeat.interval
// +kubebuilder:validation:XValidation:rule="(oldSelf.hasValue() && has(oldSelf.value().drain.deregistrationDelay) && has(self.drain.deregistrationDelay) && oldSelf.value().drain.deregistrationDelay == self.drain.deregistrationDelay && has(oldSelf.value().drain.preStopWait) == has(self.drain.preStopWait) && (!has(self.drain.preStopWait) || oldSelf.value().drain.preStopWait == self.drain.preStopWait) && has(oldSelf.value().service.loadBalancer) == has(self.service.loadBalancer) && (!has(self.service.loadBalancer) || oldSelf.value().service.loadBalancer.provider == self.service.loadBalancer.provider)) || !has(self.drain.deregistrationDelay) || !has(self.service.loadBalancer) || self.service.loadBalancer.provider != 'aws-nlb' || duration(self.drain.deregistrationDelay) > (has(self.drain.preStopWait) ? duration(self.drain.preStopWait) : !has(self.service.loadBalancer) ? duration('5s') : self.service.loadBalancer.provider == 'aws-nlb' ? duration('130s') : self.service.loadBalancer.provider == 'gke' ? duration('30s') : self.service.loadBalancer.provider == 'azure' ? duration('20s') : duration('5s'))",message="with service.loadBalancer.provider aws-nlb, drain.deregistrationDelay must be longer than drain.preStopWait (default 130s): the NLB would reset every connection of a terminating pod before it sends its first GOAWAY. Remove drain.deregistrationDelay to get the grace period",fieldPath=.drain.deregistrationDelay,optionalOldSelf=true
// +kubebuilder:validation:XValidation:rule="!((self.rollout.maxSurge == 0 || self.rollout.maxSurge == '0%') && (self.rollout.maxUnavailable == 0 || self.rollout.maxUnavailable == '0%'))",message="rollout.maxSurge and rollout.maxUnavailable cannot both be 0: a rollout could then never replace a pod",fieldPath=.rollout
// +kubebuilder:validation:XValidation:rule="!has(self.rollout.strategy) || self.rollout.strategy != 'ReconnectOnce' || !(self.rollout.maxSurge == 0 || self.rollout.maxSurge == '0%')",message="rollout.strategy ReconnectOnce starts the new revision rollout.maxSurge pods at a time: rollout.maxSurge must not be 0",fieldPath=.rollout.maxSurge
// +kubebuilder:validation:XValidation:rule="self.service.type != 'ClusterIP' || !has(self.service.externalTrafficPolicy)",message="service.externalTrafficPolicy applies only to LoadBalancer and NodePort Services",fieldPath=.service.externalTrafficPolicy
// +kubebuilder:validation:XValidation:rule="self.service.type == 'LoadBalancer' || (!has(self.service.loadBalancerSourceRanges) && !has(self.service.loadBalancer))",message="service.loadBalancer and service.loadBalancerSourceRanges apply only to type LoadBalancer",fieldPath=.service
// +kubebuilder:validation:XValidation:rule="has(self.auth) && (has(self.auth.deviceKeySecretRef) || (has(self.auth.insecureNoAuth) && self.auth.insecureNoAuth))",message="auth.deviceKeySecretRef is required: devices authenticate with JWTs signed by that key (set auth.insecureNoAuth: true only for development)"
type SocketClusterSpec struct {
	// Replicas is the number of socketserver pods.
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=0
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Image of the socketserver. Empty means the image the operator runs
	// itself, which ships the same version of the server.
	// +optional
	Image string `json:"image,omitempty"`
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// TopologySpreadConstraints of the pods. Empty means: spread across zones
	// and nodes as evenly as possible, without blocking scheduling.
	// +optional
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`
	// +optional
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`
	// PodLabels are added to the pods; they cannot replace the labels the
	// operator selects pods by.
	// +optional
	PodLabels map[string]string `json:"podLabels,omitempty"`
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Listeners ListenersSpec `json:"listeners,omitzero"`
	Redis     RedisSpec     `json:"redis"`
	// +kubebuilder:default={}
	// +optional
	Auth AuthSpec `json:"auth,omitzero"`
	// +kubebuilder:default={}
	// +optional
	Admin AdminSpec `json:"admin,omitzero"`
	// +kubebuilder:default={}
	// +optional
	Heartbeat HeartbeatSpec `json:"heartbeat,omitzero"`

	// MaxFrameBytes is the largest frame (type byte + body) a peer may send.
	// +kubebuilder:default=65536
	// +kubebuilder:validation:Minimum=16
	// +kubebuilder:validation:Maximum=16777216
	// +optional
	MaxFrameBytes int32 `json:"maxFrameBytes,omitempty"`
	// MaxConnectionsPerPod caps connections per pod; 0 means unlimited.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxConnectionsPerPod int32 `json:"maxConnectionsPerPod,omitempty"`
	// MaxPendingPerDevice caps the unacknowledged messages kept per device;
	// a full outbox refuses new messages to the backend.
	// +kubebuilder:default=10000
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxPendingPerDevice int32 `json:"maxPendingPerDevice,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Drain DrainSpec `json:"drain,omitzero"`
	// +kubebuilder:default={}
	// +optional
	Rollout RolloutSpec `json:"rollout,omitzero"`
	// +kubebuilder:default={}
	// +optional
	Service ServiceSpec `json:"service,omitzero"`
	// +kubebuilder:default={}
	// +optional
	PodDisruptionBudget PodDisruptionBudgetSpec `json:"podDisruptionBudget,omitzero"`
	// Autoscaling sizes the cluster by its connections; when set it
	// decides the replicas instead of spec.replicas (see
	// status.autoscaling). Do not combine it with a HorizontalPodAutoscaler.
	// +optional
	Autoscaling *AutoscalingSpec `json:"autoscaling,omitempty"`
	// Rebalance sets when and how fast the operator moves devices from
	// fuller pods to emptier ones, after any scale-out once the pods
	// settled (see the Balanced condition).
	// +kubebuilder:default={}
	// +optional
	Rebalance RebalanceSpec `json:"rebalance,omitzero"`
}

// RebalanceSpec: the pods are uneven when one holds more than
// relativeThreshold percent above or below the mean, and at least
// absoluteThreshold connections away from it (like EMQX's rebalance).
// Then every pod above the mean sheds what it holds above it (POST /shed,
// at shedRate GOAWAYs per second) and, while it still holds the mean,
// refuses new devices with GOAWAY, so that the devices it sheds land on
// the emptier pods even behind a random L4 load balancer.
type RebalanceSpec struct {
	// Enabled: false never sheds connections (the pods stay as uneven as
	// the load balancer left them).
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// RelativeThreshold is how far, in percent of the mean, a pod may be
	// above or below it.
	// +kubebuilder:default=20
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 100",message="rebalance.relativeThreshold is a percentage of the mean connections per pod: from 1 to 100"
	// +optional
	RelativeThreshold int32 `json:"relativeThreshold,omitempty"`
	// AbsoluteThreshold is the fewest connections a pod must be away from
	// the mean to count as uneven: moving a handful of devices costs more
	// than it evens out.
	// +kubebuilder:default=10
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="rebalance.absoluteThreshold is a number of connections: at least 1"
	// +optional
	AbsoluteThreshold int32 `json:"absoluteThreshold,omitempty"`
	// ShedRate is GOAWAYs per second on each pod that sheds; 0 paces them
	// as a drain does (drain.rate, else spread over 80% of drain.timeout).
	// +kubebuilder:default=0
	// +kubebuilder:validation:XValidation:rule="self >= 0",message="rebalance.shedRate is GOAWAYs per second: 0 (pace like a drain) or more"
	// +optional
	ShedRate int32 `json:"shedRate,omitempty"`
}

// RebalanceEnabled reports whether the operator may shed connections.
func (r RebalanceSpec) RebalanceEnabled() bool { return r.Enabled == nil || *r.Enabled }

// AutoscalingSpec sizes the cluster so that each pod holds about
// targetConnectionsPerPod connections: ceil(connections / target) pods,
// within [minReplicas, maxReplicas]. It scales up at once and down only
// when every recommendation of the last scaleDownStabilization was lower
// (devices of a removed pod all reconnect). When the pods are uneven (after
// a scale-up, new pods hold nothing) the operator sheds connections from the
// fuller ones (POST /shed), so that devices reconnect to the emptier ones;
// spec.rebalance sets when and how fast.
// +kubebuilder:validation:XValidation:rule="self.minReplicas <= self.maxReplicas",message="autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
type AutoscalingSpec struct {
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +optional
	MinReplicas int32 `json:"minReplicas,omitempty"`
	// +kubebuilder:validation:Minimum=1
	MaxReplicas int32 `json:"maxReplicas"`
	// +kubebuilder:validation:Minimum=1
	TargetConnectionsPerPod int32 `json:"targetConnectionsPerPod"`
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	ScaleDownStabilization metav1.Duration `json:"scaleDownStabilization,omitzero"`
}

// ListenersSpec sets the ports. The WebSocket path is always /ws (protocol
// v1); Server-Sent Events share the WebSocket port, at /sse.
type ListenersSpec struct {
	// +kubebuilder:default={}
	// +optional
	TCP TCPListener `json:"tcp,omitzero"`
	// +kubebuilder:default={}
	// +optional
	WebSocket WebSocketListener `json:"websocket,omitzero"`
	// SSE serves Server-Sent Events, for browsers and HTTP-only networks,
	// on the WebSocket listener's port and TLS (no port of its own): the
	// stream GET /sse, and POST /sse/ack and POST /sse/publish, which any
	// pod answers. The paths are fixed.
	// +kubebuilder:default={}
	// +optional
	SSE SSEListener `json:"sse,omitzero"`
	// GRPC serves protocol v1 as the gRPC service scp.v1.Device (one
	// bidirectional stream per device) on a port of its own, with the
	// listeners' TLS. Off unless enabled.
	// +kubebuilder:default={}
	// +optional
	GRPC GRPCListener `json:"grpc,omitzero"`
	// MQTT serves MQTT 3.1.1 and 5.0 devices (client identifier = device,
	// password = device token) on a port of its own, with the listeners'
	// TLS, on the same sessions. Off unless enabled.
	// +kubebuilder:default={}
	// +optional
	MQTT MQTTListener `json:"mqtt,omitzero"`
	// AdminPort serves the backend API, probes and metrics; it is never
	// exposed by the public Service.
	// +kubebuilder:default=9090
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	AdminPort int32 `json:"adminPort,omitempty"`
	// TLS terminates TLS on the TCP, WebSocket, gRPC and MQTT listeners.
	// +optional
	TLS *TLSSpec `json:"tls,omitempty"`
}

// TCPListener is the framed-TCP listener.
type TCPListener struct {
	// +kubebuilder:default=7000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
}

// WebSocketListener serves GET /ws, and Server-Sent Events (see sse) on
// the same port.
type WebSocketListener struct {
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
}

// SSEListener serves Server-Sent Events on the WebSocket listener.
type SSEListener struct {
	// Enabled serves the SSE paths; false answers them 404 (the WebSocket
	// path /ws is not affected).
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
}

// GRPCListener is the gRPC listener (scp.v1.Device/Connect).
type GRPCListener struct {
	// Enabled starts the gRPC listener and adds its port to the Services.
	// +kubebuilder:default=false
	// +optional
	Enabled bool `json:"enabled,omitempty"`
	// +kubebuilder:default=7001
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
}

// MQTTListener is the MQTT listener.
type MQTTListener struct {
	// Enabled starts the MQTT listener and adds its port to the Services.
	// +kubebuilder:default=false
	// +optional
	Enabled bool `json:"enabled,omitempty"`
	// +kubebuilder:default=1883
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
}

// TLSSpec names a kubernetes.io/tls Secret (tls.crt, tls.key).
type TLSSpec struct {
	// +kubebuilder:validation:MinLength=1
	SecretName string `json:"secretName"`
}

// RedisMode says how to reach Redis.
// +kubebuilder:validation:Enum=standalone;sentinel;cluster
type RedisMode string

const (
	RedisStandalone RedisMode = "standalone"
	RedisSentinel   RedisMode = "sentinel"
	RedisCluster    RedisMode = "cluster"
)

// RedisSpec is the store every server of the cluster shares.
// +kubebuilder:validation:XValidation:rule="self.mode != 'sentinel' || (has(self.masterName) && size(self.masterName) > 0)",message="redis.masterName is required when redis.mode is sentinel"
// +kubebuilder:validation:XValidation:rule="self.mode != 'standalone' || size(self.addresses) == 1",message="redis.mode standalone takes exactly one address; list several only with mode sentinel or cluster"
type RedisSpec struct {
	// Addresses are host:port pairs: the server, the Sentinels, or cluster seed nodes.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	Addresses []string `json:"addresses"`
	// +kubebuilder:default=standalone
	// +optional
	Mode RedisMode `json:"mode,omitempty"`
	// MasterName is the Sentinel master set.
	// +optional
	MasterName string `json:"masterName,omitempty"`
	// +optional
	PasswordSecretRef *SecretKeyRef `json:"passwordSecretRef,omitempty"`
	// KeyPrefix namespaces every key of this cluster in Redis.
	// +kubebuilder:default=scp
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +optional
	KeyPrefix string `json:"keyPrefix,omitempty"`
	// +optional
	TLS bool `json:"tls,omitempty"`
}

// SecretKeyRef selects one key of a Secret in the SocketCluster's namespace.
type SecretKeyRef struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	Key string `json:"key"`
}

// AuthSpec sets how devices and backends authenticate.
// +kubebuilder:validation:XValidation:rule="!(has(self.deviceKeySecretRef) && has(self.insecureNoAuth) && self.insecureNoAuth)",message="auth.insecureNoAuth: true cannot be combined with auth.deviceKeySecretRef"
type AuthSpec struct {
	// DeviceKeySecretRef holds the HS256 key that device JWTs are signed with.
	// +optional
	DeviceKeySecretRef *SecretKeyRef `json:"deviceKeySecretRef,omitempty"`
	// APITokenSecretRef holds the bearer token of the backend API and /drain.
	// Without it the operator generates a random token once, in the Secret
	// <name>-api-token (key "token", owned by the SocketCluster; see
	// status.apiTokenSecretName). The admin API never runs without a token.
	// +optional
	APITokenSecretRef *SecretKeyRef `json:"apiTokenSecretRef,omitempty"`
	// InsecureNoAuth accepts any device token. Development only.
	// +optional
	InsecureNoAuth bool `json:"insecureNoAuth,omitempty"`
}

// AdminSpec restricts who reaches the admin port (backend API, /drain,
// probes and metrics). Its bearer token is auth.apiTokenSecretRef, or the one
// the operator generates.
// +kubebuilder:validation:XValidation:rule="!has(self.networkPolicy) || self.networkPolicy || !has(self.allowedFrom) || size(self.allowedFrom) == 0",message="admin.allowedFrom is enforced by the NetworkPolicy: it cannot be set with admin.networkPolicy: false",fieldPath=.allowedFrom
type AdminSpec struct {
	// NetworkPolicy creates a NetworkPolicy that selects the pods, leaves
	// the device ports open to everyone and admits the admin port only from
	// allowedFrom and from the operator. false creates none (and deletes the
	// one created before).
	// +kubebuilder:default=true
	// +optional
	NetworkPolicy *bool `json:"networkPolicy,omitempty"`
	// AllowedFrom are the peers (backends, Prometheus) that may reach the
	// admin port, as in a NetworkPolicy rule. Empty means only the operator
	// (and the kubelet's probes, which most CNIs let through).
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	// +optional
	AllowedFrom []AdminPeer `json:"allowedFrom,omitempty"`
}

// AdminPeer admits one set of clients to the admin port, like a
// NetworkPolicyPeer: pods selected by podSelector in the namespaces selected
// by namespaceSelector (a missing podSelector means every pod of those
// namespaces; a missing namespaceSelector means the SocketCluster's
// namespace), or addresses in ipBlock.
// +kubebuilder:validation:XValidation:rule="has(self.namespaceSelector) || has(self.podSelector) || has(self.ipBlock)",message="each admin.allowedFrom entry needs namespaceSelector, podSelector or ipBlock"
// +kubebuilder:validation:XValidation:rule="!has(self.ipBlock) || !(has(self.namespaceSelector) || has(self.podSelector))",message="an admin.allowedFrom entry takes either ipBlock or namespaceSelector/podSelector, not both"
type AdminPeer struct {
	// NamespaceSelector selects namespaces by their labels, e.g.
	// kubernetes.io/metadata.name: backends. {} selects every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// PodSelector selects pods by their labels. {} selects every pod.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// IPBlock admits addresses, e.g. the node CIDR for CNIs that apply
	// NetworkPolicies to the kubelet's probes.
	// +optional
	IPBlock *networkingv1.IPBlock `json:"ipBlock,omitempty"`
}

// HeartbeatSpec sets how often devices ping and when a silent one is dropped.
type HeartbeatSpec struct {
	// +kubebuilder:default="15s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	Interval metav1.Duration `json:"interval,omitzero"`
	// +kubebuilder:default="45s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	Timeout metav1.Duration `json:"timeout,omitzero"`
}

// DrainSpec sets how a terminating pod hands its connections to the others.
// The pod's terminationGracePeriodSeconds is preStopWait + timeout + 15s.
type DrainSpec struct {
	// Timeout is how long a pod sends GOAWAYs before it closes what is left.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	Timeout metav1.Duration `json:"timeout,omitzero"`
	// Rate is GOAWAYs per second; 0 spreads them over 80% of the timeout.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +optional
	Rate int32 `json:"rate,omitempty"`
	// ClusterRate is GOAWAYs per second over all the pods the operator
	// drains at once (after a ReconnectOnce switch, shared evenly among
	// them; before a scale-down, one pod at a time); 0 gives each pod rate
	// (or its timeout spread). It bounds the reconnect (and session
	// resume) load the pods that stay take.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +optional
	ClusterRate int32 `json:"clusterRate,omitempty"`
	// Jitter bounds the random reconnect delay told to each device, so that
	// they do not all reconnect at once.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	Jitter metav1.Duration `json:"jitter,omitzero"`
	// PreStopWait is how long a terminating pod keeps serving its
	// connections, already unready, while the load balancer stops sending
	// it new ones, before its first GOAWAY: devices told to reconnect then
	// land on other pods. Empty means the load balancer's default: aws-nlb
	// 130s (the AWS Load Balancer Controller takes about 2 minutes to stop
	// routing to a deregistered target), gke 30s, azure 20s, none 5s.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	PreStopWait *metav1.Duration `json:"preStopWait,omitempty"`
	// DeregistrationDelay overrides the AWS target group's deregistration
	// delay (aws-nlb only): how long the NLB keeps a deregistered target's
	// connections before it resets them. Empty means the pods' grace period,
	// so that the NLB never cuts a pod that is still draining.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('3600s')",message="drain.deregistrationDelay must not exceed 3600s, the longest an AWS target group allows"
	// +optional
	DeregistrationDelay *metav1.Duration `json:"deregistrationDelay,omitempty"`
}

// RolloutStrategy says how pods of a new pod template replace the old ones.
// +kubebuilder:validation:Enum=Surge;ReconnectOnce
type RolloutStrategy string

const (
	// RolloutSurge is the Deployment's rolling update: maxSurge new pods at
	// a time, then old pods drain; a device of a draining pod may land on
	// another old pod and move again.
	RolloutSurge RolloutStrategy = "Surge"
	// RolloutReconnectOnce is blue-green: one Deployment per revision; the
	// new revision comes up in full (maxSurge pods at a time) while the old
	// one serves, then the public Service switches to it at once and the
	// operator drains the old pods, so that each device moves once. It
	// needs room for twice the replicas during a rollout.
	RolloutReconnectOnce RolloutStrategy = "ReconnectOnce"
)

// RolloutSpec says how a changed pod template rolls out. The default never
// lowers capacity: new pods come up before old ones drain.
type RolloutSpec struct {
	// Strategy is Surge (the Deployment's rolling update) or ReconnectOnce
	// (blue-green: every device moves once, to the new revision). Surge is
	// the default because ReconnectOnce runs twice the pods for a while.
	// +kubebuilder:default=Surge
	// +optional
	Strategy RolloutStrategy `json:"strategy,omitempty"`
	// MaxSurge: with Surge, the Deployment's maxSurge; with ReconnectOnce,
	// how many pods of the new revision are started at a time.
	// +kubebuilder:default="25%"
	// +optional
	MaxSurge *intstr.IntOrString `json:"maxSurge,omitempty"`
	// MaxUnavailable is the Deployment's maxUnavailable (Surge only).
	// +kubebuilder:default=0
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +optional
	MinReadySeconds int32 `json:"minReadySeconds,omitempty"`
	// ResumeThreshold gates drains: after a pod drained (a scale-down's,
	// or a ReconnectOnce rollout's first old pod), the next drains only
	// once the serving pods hold this percentage of the connections they
	// held before (its devices came back). Otherwise the scale-down or
	// rollout pauses (Draining reason DevicesNotReturning) until they do,
	// or until the annotation sockets.socketcluster.io/resume-drain is set
	// to a time after that drain started. 0 turns the gate off (a
	// ReconnectOnce rollout then drains every old pod at once).
	// +kubebuilder:default=90
	// +kubebuilder:validation:XValidation:rule="self >= 0 && self <= 100",message="rollout.resumeThreshold is a percentage of the connections: 0 (no gate) to 100"
	// +optional
	ResumeThreshold *int32 `json:"resumeThreshold,omitempty"`
	// ResumeWindow is how long, from the start of a pod's drain, its
	// devices may take to come back before the next drain pauses. Empty
	// means as long as the drain may take (10s for the readiness probe to
	// fail, drain.preStopWait, drain.timeout) + drain.jitter + 30s.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	ResumeWindow *metav1.Duration `json:"resumeWindow,omitempty"`
}

// LoadBalancerProvider selects a preset of Service annotations and the
// drain timings that go with that load balancer (docs/load-balancers.md).
// +kubebuilder:validation:Enum=aws-nlb;gke;azure
type LoadBalancerProvider string

const (
	// AWSNLB is the AWS Load Balancer Controller's NLB with IP targets.
	AWSNLB LoadBalancerProvider = "aws-nlb"
	// GKE is GKE's backend service-based external passthrough Network Load Balancer.
	GKE LoadBalancerProvider = "gke"
	// Azure is the Azure cloud provider's Standard Load Balancer.
	Azure LoadBalancerProvider = "azure"
)

// ServiceSpec shapes the public Service (the TCP port and the WebSocket
// port, which serves SSE too; never the admin port).
type ServiceSpec struct {
	// +kubebuilder:default=LoadBalancer
	// +kubebuilder:validation:Enum=LoadBalancer;NodePort;ClusterIP
	// +optional
	Type corev1.ServiceType `json:"type,omitempty"`
	// Annotations are added to the public Service; they win over a preset's.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
	// +optional
	LoadBalancer *LoadBalancerSpec `json:"loadBalancer,omitempty"`
	// ExternalTrafficPolicy defaults to Local for LoadBalancer and NodePort,
	// which keeps client addresses and avoids a second hop.
	// +kubebuilder:validation:Enum=Local;Cluster
	// +optional
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy `json:"externalTrafficPolicy,omitempty"`
	// +optional
	LoadBalancerSourceRanges []string `json:"loadBalancerSourceRanges,omitempty"`
}

// LoadBalancerSpec selects a cloud preset.
type LoadBalancerSpec struct {
	Provider LoadBalancerProvider `json:"provider"`
}

// PodDisruptionBudgetSpec limits voluntary evictions (node drains, upgrades).
type PodDisruptionBudgetSpec struct {
	// +kubebuilder:default=1
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
}

// SocketClusterStatus is what the operator last observed.
type SocketClusterStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Replicas is the number of pods (of any version) the Deployment has.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// +optional
	UpdatedReplicas int32 `json:"updatedReplicas,omitempty"`
	// Selector selects the pods, for the scale subresource (kubectl scale, HPA).
	// +optional
	Selector string `json:"selector,omitempty"`
	// CurrentImage is the socketserver image of the pod template.
	// +optional
	CurrentImage string `json:"currentImage,omitempty"`
	// Connections is the sum of the open connections the current pods
	// published to Redis within the last 30s.
	// +optional
	Connections int64 `json:"connections,omitempty"`
	// ConnectionsObservedAt is when Connections was last read from Redis.
	// +optional
	ConnectionsObservedAt *metav1.Time `json:"connectionsObservedAt,omitempty"`
	// APITokenSecretName is the Secret holding the admin API's bearer token:
	// auth.apiTokenSecretRef's, or the one the operator generated (key
	// "token") when the spec names none.
	// +optional
	APITokenSecretName string `json:"apiTokenSecretName,omitempty"`
	// ActiveRevision is the pod template revision the public Service
	// sends devices to (ReconnectOnce); empty with Surge.
	// +optional
	ActiveRevision string `json:"activeRevision,omitempty"`
	// ActiveSince is when the public Service switched to ActiveRevision;
	// old pods are drained once the load balancer had time to notice.
	// +optional
	ActiveSince *metav1.Time `json:"activeSince,omitempty"`
	// Autoscaling is what spec.autoscaling decided.
	// +optional
	Autoscaling *AutoscalingStatus `json:"autoscaling,omitempty"`
	// Rebalance is when connections were last shed (spec.rebalance).
	// +optional
	Rebalance *RebalanceStatus `json:"rebalance,omitempty"`
	// Pods are the SocketCluster's pods with their revision and what they
	// last published to Redis.
	// +listType=map
	// +listMapKey=name
	// +optional
	Pods []PodStatus `json:"pods,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AutoscalingStatus is the autoscaler's state.
type AutoscalingStatus struct {
	// Replicas is what the cluster runs instead of spec.replicas.
	Replicas int32 `json:"replicas"`
	// Recommendation is the last ceil(connections / target), within bounds.
	// +optional
	Recommendation int32 `json:"recommendation,omitempty"`
	// LowSince is when the recommendations started to stay below Replicas.
	// +optional
	LowSince *metav1.Time `json:"lowSince,omitempty"`
	// LastScaleTime is when Replicas last changed.
	// +optional
	LastScaleTime *metav1.Time `json:"lastScaleTime,omitempty"`
}

// RebalanceStatus is the rebalancer's state (spec.rebalance).
type RebalanceStatus struct {
	// UnevenSince is when the pods were first seen uneven; a shed waits
	// until they stayed so for a while.
	// +optional
	UnevenSince *metav1.Time `json:"unevenSince,omitempty"`
	// RebalancedAt is when connections were last shed from the fuller
	// pods; the next shed waits for the devices to settle.
	// +optional
	RebalancedAt *metav1.Time `json:"rebalancedAt,omitempty"`
	// ShedUntil is when the last shed's pods stop refusing new devices at
	// the latest; the next shed waits for it.
	// +optional
	ShedUntil *metav1.Time `json:"shedUntil,omitempty"`
}

// PodStatus is one pod as the operator last saw it.
type PodStatus struct {
	Name string `json:"name"`
	// Revision is the pod template revision (ReconnectOnce), empty with Surge.
	// +optional
	Revision string `json:"revision,omitempty"`
	// Connections the pod published to Redis within the last 30s; absent
	// when it published none.
	// +optional
	Connections *int64 `json:"connections,omitempty"`
	// Draining: the pod is unready and sends its devices GOAWAY.
	// +optional
	Draining bool `json:"draining,omitempty"`
}

// SocketCluster runs socketservers behind a Service.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=sc
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.spec.replicas`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Connections",type=integer,JSONPath=`.status.connections`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.status.currentImage`
// +kubebuilder:printcolumn:name="Revision",type=string,JSONPath=`.status.activeRevision`,priority=1
// +kubebuilder:printcolumn:name="Rollout",type=string,JSONPath=`.status.conditions[?(@.type=="Draining")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SocketCluster struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	Spec SocketClusterSpec `json:"spec"`
	// +optional
	Status SocketClusterStatus `json:"status,omitzero"`
}

// SocketClusterList is a list of SocketClusters.
// +kubebuilder:object:root=true
type SocketClusterList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []SocketCluster `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SocketCluster{}, &SocketClusterList{})
}
