package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

var ctx = context.Background()

// secret creates a Secret with the given data.
func secret(t *testing.T, c client.Client, ns, name string, data map[string]string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
	if err := c.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// socketCluster creates a SocketCluster from a YAML manifest.
func socketCluster(t *testing.T, c client.Client, ns, manifest string) *v1alpha1.SocketCluster {
	t.Helper()
	sc := &v1alpha1.SocketCluster{}
	if err := yaml.UnmarshalStrict([]byte(manifest), sc); err != nil {
		t.Fatal(err)
	}
	sc.Namespace = ns
	if err := c.Create(ctx, sc); err != nil {
		t.Fatal(err)
	}
	return sc
}

const minimal = `
apiVersion: sockets.socketcluster.io/v1alpha1
kind: SocketCluster
metadata: {name: edge}
spec:
  redis: {addresses: ["127.0.0.1:1"]}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
`

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// deployment waits for the SocketCluster's Deployment and returns it.
func deployment(t *testing.T, c client.Client, ns string, ok func(*appsv1.Deployment) error) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{}
	eventually(t, "deployment", func() error {
		if err := c.Get(ctx, key(ns, "edge"), d); err != nil {
			return err
		}
		return ok(d)
	})
	return d
}

func anyDeployment(*appsv1.Deployment) error { return nil }

func assertControlledBy(t *testing.T, obj client.Object, sc *v1alpha1.SocketCluster) {
	t.Helper()
	refs := obj.GetOwnerReferences()
	if len(refs) != 1 || refs[0].UID != sc.UID || refs[0].Kind != "SocketCluster" ||
		refs[0].Controller == nil || !*refs[0].Controller || refs[0].BlockOwnerDeletion == nil || !*refs[0].BlockOwnerDeletion {
		t.Errorf("%T %s: owner references %+v, want the SocketCluster as controller blocking deletion", obj, obj.GetName(), refs)
	}
}

func TestCreateMakesOwnedObjects(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal)

	d := deployment(t, c, ns, anyDeployment)
	assertControlledBy(t, d, sc)
	if *d.Spec.Replicas != 3 || d.Spec.Template.Spec.Containers[0].Image != defaultImage {
		t.Errorf("replicas %d image %s", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image)
	}
	if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 5+60+15 {
		t.Errorf("grace period %d, want the generic preStop wait 5 + drain 60 + 15", g)
	}
	if d.Spec.Template.Annotations[resources.AnnotationSecretHash] == "" {
		t.Error("no secret hash on the pod template")
	}

	svc := &corev1.Service{}
	for _, name := range []string{"edge", "edge-admin", "edge-headless"} {
		if err := c.Get(ctx, key(ns, name), svc); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		assertControlledBy(t, svc, sc)
	}
	if err := c.Get(ctx, key(ns, "edge"), svc); err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || len(svc.Spec.Ports) != 2 || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("public service %s %+v %s", svc.Spec.Type, svc.Spec.Ports, svc.Spec.ExternalTrafficPolicy)
	}
	pdb := &policyv1.PodDisruptionBudget{}
	if err := c.Get(ctx, key(ns, "edge"), pdb); err != nil {
		t.Fatal(err)
	}
	assertControlledBy(t, pdb, sc)

	eventually(t, "status", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		s := sc.Status
		if s.ObservedGeneration != sc.Generation || s.Selector != "app.kubernetes.io/instance=edge,app.kubernetes.io/name=socketserver" || s.CurrentImage != defaultImage {
			return fmt.Errorf("status %+v", s)
		}
		// No pods run in envtest: not available, and rolling out.
		return conditionIs(sc, v1alpha1.ConditionAvailable, metav1.ConditionFalse, v1alpha1.ReasonMinimumReplicasUnavailable)
	})
}

func conditionIs(sc *v1alpha1.SocketCluster, typ string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(sc.Status.Conditions, typ)
	if c == nil || c.Status != status || c.Reason != reason {
		return fmt.Errorf("condition %s: %+v, want %s/%s", typ, c, status, reason)
	}
	return nil
}

func TestImageUpdateRollsTheDeployment(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal)
	deployment(t, c, ns, anyDeployment)

	patch := client.MergeFrom(sc.DeepCopy())
	sc.Spec.Image = "registry.example/socketserver:2"
	if err := c.Patch(ctx, sc, patch); err != nil {
		t.Fatal(err)
	}
	deployment(t, c, ns, func(d *appsv1.Deployment) error {
		if img := d.Spec.Template.Spec.Containers[0].Image; img != sc.Spec.Image {
			return fmt.Errorf("image %s", img)
		}
		return nil
	})
	eventually(t, "status.currentImage", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		if sc.Status.CurrentImage != "registry.example/socketserver:2" {
			return fmt.Errorf("currentImage %s", sc.Status.CurrentImage)
		}
		return nil
	})
}

func TestScaleSubresource(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal)
	deployment(t, c, ns, anyDeployment)

	// What kubectl scale and the HPA do.
	scale := &autoscalingv1.Scale{}
	eventually(t, "scale selector", func() error {
		if err := c.SubResource("scale").Get(ctx, sc, scale); err != nil {
			return err
		}
		if scale.Status.Selector != "app.kubernetes.io/instance=edge,app.kubernetes.io/name=socketserver" {
			return fmt.Errorf("scale status %+v", scale.Status)
		}
		return nil
	})
	// The Scale carries the SocketCluster's resourceVersion, which the
	// controller's status writes move on: retry with a fresh one.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.SubResource("scale").Get(ctx, sc, scale); err != nil {
			return err
		}
		scale.Spec.Replicas = 5
		return c.SubResource("scale").Update(ctx, sc, client.WithSubResourceBody(scale))
	})
	if err != nil {
		t.Fatal(err)
	}
	deployment(t, c, ns, func(d *appsv1.Deployment) error {
		if *d.Spec.Replicas != 5 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})
}

func TestInvalidSpecsAreRejected(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	for _, tc := range []struct{ name, spec, message string }{
		{"no device key", `
  redis: {addresses: [r:6379]}`, "auth.deviceKeySecretRef is required"},
		{"ReconnectOnce without surge", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rollout: {strategy: ReconnectOnce, maxSurge: 0, maxUnavailable: 1}`, "rollout.strategy ReconnectOnce starts the new revision rollout.maxSurge pods at a time: rollout.maxSurge must not be 0"},
		{"resume threshold above 100%", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rollout: {resumeThreshold: 150}`, "rollout.resumeThreshold is a percentage of the connections: 0 (no gate) to 100"},
		{"bad resume window", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rollout: {resumeWindow: 2 minutes}`, "spec.rollout.resumeWindow in body should match"},
		{"unknown strategy", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rollout: {strategy: BlueGreen}`, `spec.rollout.strategy: Unsupported value: "BlueGreen"`},
		{"autoscaling bounds crossed", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  autoscaling: {minReplicas: 5, maxReplicas: 3, targetConnectionsPerPod: 1000}`, "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"},
		{"rebalance threshold of 0%", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rebalance: {relativeThreshold: 0}`, "rebalance.relativeThreshold is a percentage of the mean connections per pod: from 1 to 100"},
		{"rebalance threshold above 100%", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rebalance: {relativeThreshold: 150}`, "rebalance.relativeThreshold is a percentage of the mean connections per pod: from 1 to 100"},
		{"rebalance absolute threshold of 0", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rebalance: {absoluteThreshold: 0}`, "rebalance.absoluteThreshold is a number of connections: at least 1"},
		{"negative shed rate", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rebalance: {shedRate: -1}`, "rebalance.shedRate is GOAWAYs per second: 0 (pace like a drain) or more"},
		{"autoscaling without a target", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  autoscaling: {maxReplicas: 3}`, "spec.autoscaling.targetConnectionsPerPod: Required value"},
		{"key and insecure", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true, deviceKeySecretRef: {name: k, key: k}}`, "auth.insecureNoAuth: true cannot be combined with auth.deviceKeySecretRef"},
		{"no redis address", `
  redis: {addresses: []}
  auth: {insecureNoAuth: true}`, "spec.redis.addresses in body should have at least 1 items"},
		{"sentinel without master", `
  redis: {mode: sentinel, addresses: [s1:26379, s2:26379]}
  auth: {insecureNoAuth: true}`, "redis.masterName is required when redis.mode is sentinel"},
		{"standalone with two addresses", `
  redis: {addresses: [r1:6379, r2:6379]}
  auth: {insecureNoAuth: true}`, "redis.mode standalone takes exactly one address"},
		{"heartbeat timeout too short", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  heartbeat: {interval: 45s}`, "heartbeat.timeout must be longer than heartbeat.interval"},
		{"bad duration", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  heartbeat: {interval: soon}`, "spec.heartbeat.interval in body should match"},
		{"grace period over an hour", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {timeout: 59m, preStopWait: 46s}`, "terminationGracePeriodSeconds, which must not exceed 3600s"},
		{"grace period over an hour with the generic wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {timeout: 3581s}`, "drain.preStopWait (default by load balancer: aws-nlb 130s, gke 30s, azure 20s, none 5s) + drain.timeout + 15s"},
		{"grace period over an hour with the aws-nlb wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {timeout: 3456s}
  service: {loadBalancer: {provider: aws-nlb}}`, "must not exceed 3600s"},
		{"grace period over an hour with the gke wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {timeout: 3556s}
  service: {loadBalancer: {provider: gke}}`, "must not exceed 3600s"},
		{"grace period over an hour with the azure wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {timeout: 3566s}
  service: {loadBalancer: {provider: azure}}`, "must not exceed 3600s"},
		{"unknown load balancer", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  service: {loadBalancer: {provider: digitalocean}}`, `supported values: "aws-nlb", "gke", "azure"`},
		{"heartbeat beyond the NLB idle timeout", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  heartbeat: {interval: 350s, timeout: 15m}
  service: {loadBalancer: {provider: aws-nlb}}`, "heartbeat.interval must be below 350s: the NLB drops a TCP flow that is idle for 350s"},
		{"heartbeat beyond the Azure idle timeout", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  heartbeat: {interval: 100m, timeout: 5h}
  service: {loadBalancer: {provider: azure}}`, "heartbeat.interval must be below 100m, the longest TCP idle timeout an Azure load balancer can be given"},
		{"deregistration delay within the aws-nlb wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {deregistrationDelay: 130s}
  service: {loadBalancer: {provider: aws-nlb}}`, "drain.deregistrationDelay must be longer than drain.preStopWait (default 130s)"},
		{"deregistration delay within an explicit wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {deregistrationDelay: 200s, preStopWait: 200s}
  service: {loadBalancer: {provider: aws-nlb}}`, "the NLB would reset every connection of a terminating pod before it sends its first GOAWAY"},
		{"deregistration delay over an hour", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {deregistrationDelay: 61m}`, "drain.deregistrationDelay must not exceed 3600s"},
		{"bad preStop wait", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  drain: {preStopWait: 2 minutes}`, "spec.drain.preStopWait in body should match"},
		{"same ports", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  listeners: {adminPort: 8080}`, "listeners.tcp.port, listeners.websocket.port and listeners.adminPort must all be different"},
		{"grpc on the tcp port", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  listeners: {grpc: {enabled: true, port: 7000}}`, "listeners.grpc.port must differ from listeners.tcp.port, listeners.websocket.port and listeners.adminPort"},
		{"mqtt on the grpc port", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  listeners: {grpc: {enabled: true}, mqtt: {enabled: true, port: 7001}}`, "listeners.mqtt.port must differ from the ports of the other listeners (tcp, websocket, grpc) and listeners.adminPort"},
		{"cluster ip with traffic policy", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  service: {type: ClusterIP, externalTrafficPolicy: Local}`, "service.externalTrafficPolicy applies only to LoadBalancer and NodePort Services"},
		{"source ranges without a load balancer", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  service: {type: NodePort, loadBalancerSourceRanges: [10.0.0.0/8]}`, "apply only to type LoadBalancer"},
		{"rollout that cannot move", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  rollout: {maxSurge: 0%}`, "rollout.maxSurge and rollout.maxUnavailable cannot both be 0"},
		{"frame too small", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  maxFrameBytes: 8`, "spec.maxFrameBytes in body should be greater than or equal to 16"},
		{"admin peer without selector", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  admin: {allowedFrom: [{}]}`, "each admin.allowedFrom entry needs namespaceSelector, podSelector or ipBlock"},
		{"admin peer with ipBlock and selector", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  admin: {allowedFrom: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}`, "takes either ipBlock or namespaceSelector/podSelector, not both"},
		{"allowedFrom without the NetworkPolicy", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  admin: {networkPolicy: false, allowedFrom: [{podSelector: {}}]}`, "admin.allowedFrom is enforced by the NetworkPolicy"},
		{"configurable websocket path", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  listeners: {websocket: {path: /socket}}`, `unknown field "spec.listeners.websocket.path"`},
		{"configurable sse path", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  listeners: {sse: {path: /events}}`, `unknown field "spec.listeners.sse.path"`},
		{"sse on a port of its own", `
  redis: {addresses: [r:6379]}
  auth: {insecureNoAuth: true}
  listeners: {sse: {port: 8081}}`, `unknown field "spec.listeners.sse.port"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := map[string]any{}
			manifest := "apiVersion: sockets.socketcluster.io/v1alpha1\nkind: SocketCluster\nmetadata: {name: bad, namespace: " + ns + "}\nspec:" + tc.spec
			if err := yaml.Unmarshal([]byte(manifest), &u); err != nil {
				t.Fatal(err)
			}
			err := c.Create(ctx, unstructuredObj(u), client.FieldValidation("Strict"))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q\nlacks %q", err, tc.message)
			}
		})
	}

	// The limits themselves are allowed: 3585s + 15s = 3600s.
	for name, spec := range map[string]string{
		"longest-drain": `
  drain: {timeout: 59m, preStopWait: 45s}`,
		"longest-generic-drain": `
  drain: {timeout: 3580s}`,
		"longest-aws-drain": `
  drain: {timeout: 3455s, deregistrationDelay: 3600s}
  heartbeat: {interval: 349s, timeout: 20m}
  service: {loadBalancer: {provider: aws-nlb}}`,
		"longest-azure-heartbeat": `
  heartbeat: {interval: 99m, timeout: 5h}
  service: {loadBalancer: {provider: azure}}`,
		"delay-beyond-an-explicit-wait": `
  drain: {preStopWait: 150s, deregistrationDelay: 151s}
  service: {loadBalancer: {provider: aws-nlb}}`,
		"delay-without-aws": `
  drain: {deregistrationDelay: 1s}
  service: {loadBalancer: {provider: gke}}`,
	} {
		socketCluster(t, c, ns, "metadata: {name: "+name+"}\nspec:\n  redis: {addresses: [r:6379]}\n  auth: {insecureNoAuth: true}"+spec+"\n")
	}
}

// A legal but risky spec gets TimingsSafe=False and a Warning event;
// fixing it turns the condition back to True.
func TestRiskyTimingsWarn(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	socketCluster(t, c, ns, minimal+`
  drain: {preStopWait: 60s}
  service: {loadBalancer: {provider: aws-nlb}}
`)
	sc := &v1alpha1.SocketCluster{}
	eventually(t, "TimingsSafe=False", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionTimingsSafe, metav1.ConditionFalse, v1alpha1.ReasonPreStopWaitTooShort)
	})
	events := &corev1.EventList{}
	eventually(t, "warning event", func() error {
		if err := c.List(ctx, events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == v1alpha1.ReasonPreStopWaitTooShort && e.Type == corev1.EventTypeWarning && e.InvolvedObject.Name == "edge" &&
				strings.Contains(e.Message, "about 2 minutes") {
				return nil
			}
		}
		return fmt.Errorf("no PreStopWaitTooShort event in %d events", len(events.Items))
	})
	d := deployment(t, c, ns, anyDeployment)
	if cmd := d.Spec.Template.Spec.Containers[0].Lifecycle.PreStop.Exec.Command; cmd[len(cmd)-1] != "--delay=1m0s" {
		t.Errorf("preStop %v", cmd)
	}

	patchSpec(t, c, ns, "edge", `{"drain":{"preStopWait":null}}`)
	eventually(t, "TimingsSafe=True", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionTimingsSafe, metav1.ConditionTrue, v1alpha1.ReasonTimingsSafe)
	})
	eventually(t, "the default AWS wait in the pods", func() error {
		if err := c.Get(ctx, key(ns, "edge"), d); err != nil {
			return err
		}
		if g := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 130+60+15 {
			return fmt.Errorf("grace period %d", g)
		}
		return nil
	})
}

// SSE is on by default and shares the WebSocket port; turning it off passes
// --sse-enabled=false to the pods, turning it back on removes the flag.
func TestSSEFollowsTheSpec(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal)
	if e := sc.Spec.Listeners.SSE.Enabled; e == nil || !*e {
		t.Errorf("spec.listeners.sse.enabled %v, want the default true", e)
	}
	sseArgs := func(d *appsv1.Deployment) []string {
		var out []string
		for _, a := range d.Spec.Template.Spec.Containers[0].Args {
			if strings.HasPrefix(a, "--sse-enabled") {
				out = append(out, a)
			}
		}
		return out
	}
	d := deployment(t, c, ns, anyDeployment)
	if a := sseArgs(d); len(a) != 0 {
		t.Errorf("args %q: SSE is on by default, no flag expected", a)
	}

	patch := func(enabled bool) {
		t.Helper()
		p := fmt.Sprintf(`{"spec":{"listeners":{"sse":{"enabled":%t}}}}`, enabled)
		if err := c.Patch(ctx, sc, client.RawPatch(types.MergePatchType, []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	patch(false)
	deployment(t, c, ns, func(d *appsv1.Deployment) error {
		if a := sseArgs(d); !slices.Equal(a, []string{"--sse-enabled=false"}) {
			return fmt.Errorf("SSE args %q, want --sse-enabled=false", a)
		}
		return nil
	})
	svc := &corev1.Service{}
	if err := c.Get(ctx, key(ns, "edge"), svc); err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Name)
	}
	if !slices.Equal(ports, []string{"tcp", "ws"}) {
		t.Errorf("public Service ports %v: SSE has no port of its own", ports)
	}

	patch(true)
	deployment(t, c, ns, func(d *appsv1.Deployment) error {
		if a := sseArgs(d); len(a) != 0 {
			return fmt.Errorf("SSE args %q after enabling it again", a)
		}
		return nil
	})
}

func TestSecretRotationRollsPods(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	s := secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	socketCluster(t, c, ns, minimal)
	before := deployment(t, c, ns, anyDeployment).Spec.Template.Annotations[resources.AnnotationSecretHash]

	s.StringData = map[string]string{"key": "k2"}
	if err := c.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	deployment(t, c, ns, func(d *appsv1.Deployment) error {
		if h := d.Spec.Template.Annotations[resources.AnnotationSecretHash]; h == before {
			return errors.New("secret hash unchanged")
		}
		return nil
	})
}

func TestMissingSecretHoldsTheDeployment(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	sc := socketCluster(t, c, ns, minimal)
	eventually(t, "degraded", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonSecretMissing)
	})
	if msg := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDegraded).Message; !strings.Contains(msg, "device-key/key") {
		t.Errorf("message %q does not name the Secret", msg)
	}
	if err := c.Get(ctx, key(ns, "edge"), &appsv1.Deployment{}); err == nil {
		t.Error("Deployment created although its pods could not start")
	}
	events := &corev1.EventList{}
	eventually(t, "warning event", func() error {
		if err := c.List(ctx, events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == v1alpha1.ReasonSecretMissing && e.Type == corev1.EventTypeWarning && e.InvolvedObject.Name == "edge" {
				return nil
			}
		}
		return fmt.Errorf("no SecretMissing event in %d events", len(events.Items))
	})

	// The Secret watch brings it back without waiting for a resync.
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	deployment(t, c, ns, anyDeployment)
	eventually(t, "recovered", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		// Nothing listens on the Redis address of these tests.
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonRedisUnreachable)
	})
}

func TestDeletionLeavesForeignObjects(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	// Same labels as the owned Service, but not owned: must stay untouched.
	foreign := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edge-metrics", Labels: map[string]string{resources.LabelInstance: "edge", resources.LabelName: resources.AppName}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9090}}, Selector: map[string]string{resources.LabelInstance: "edge"}},
	}
	if err := c.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	sc := socketCluster(t, c, ns, minimal)
	d := deployment(t, c, ns, anyDeployment)
	assertControlledBy(t, d, sc)

	if err := c.Delete(ctx, sc); err != nil {
		t.Fatal(err)
	}
	eventually(t, "SocketCluster gone", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err == nil {
			return errors.New("still there")
		}
		return nil
	})
	// envtest runs no garbage collector: the owner references above are
	// what makes the cluster's GC delete the owned objects.
	after := &corev1.Service{}
	if err := c.Get(ctx, key(ns, "edge-metrics"), after); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != foreign.ResourceVersion || len(after.OwnerReferences) != 0 {
		t.Errorf("foreign Service changed: %+v", after.ObjectMeta)
	}
}

func TestStatusFollowsTheDeployment(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, minimal)
	d := deployment(t, c, ns, anyDeployment)

	// envtest runs no Deployment controller: play its part. The operator
	// applies the Deployment meanwhile: retry on a conflict, from a fresh copy.
	setStatus := func(ready int32) {
		t.Helper()
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
				return err
			}
			d.Status = appsv1.DeploymentStatus{
				ObservedGeneration: d.Generation, Replicas: 3, UpdatedReplicas: 3, ReadyReplicas: ready, AvailableReplicas: ready,
			}
			return c.Status().Update(ctx, d)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	setStatus(3)
	eventually(t, "available", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		if sc.Status.ReadyReplicas != 3 || sc.Status.Replicas != 3 || sc.Status.UpdatedReplicas != 3 {
			return fmt.Errorf("replicas %+v", sc.Status)
		}
		return errors.Join(
			conditionIs(sc, v1alpha1.ConditionAvailable, metav1.ConditionTrue, v1alpha1.ReasonMinimumReplicasReady),
			conditionIs(sc, v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonRolloutComplete),
		)
	})

	setStatus(2)
	eventually(t, "one pod lost", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return errors.Join(
			conditionIs(sc, v1alpha1.ConditionAvailable, metav1.ConditionFalse, v1alpha1.ReasonMinimumReplicasUnavailable),
			conditionIs(sc, v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRolloutInProgress),
		)
	})
	// The metric follows the status the operator wrote.
	eventually(t, "condition metric", func() error {
		if controllers.ConditionValue(ns, "edge", v1alpha1.ConditionAvailable, metav1.ConditionFalse) != 1 ||
			controllers.ConditionValue(ns, "edge", v1alpha1.ConditionAvailable, metav1.ConditionTrue) != 0 {
			return errors.New("socketcluster_condition does not show Available=False")
		}
		return nil
	})
}

func TestSamplesAreAccepted(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	files, err := filepath.Glob(filepath.Join("..", "config", "samples", "sockets_v1alpha1_*.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("samples %v %v", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			u := map[string]any{}
			if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u) == 0 {
				continue
			}
			obj := unstructuredObj(u)
			obj.SetNamespace(ns)
			if err := c.Create(ctx, obj, client.FieldValidation("Strict")); err != nil {
				t.Errorf("%s: %s %s: %v", f, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}

func TestConfigDefaultDeploysTheOperator(t *testing.T) {
	c := k8s(t) // applied config/default on start
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, key("socketcluster-system", "socketcluster-controller-manager"), d); err != nil {
		t.Fatal(err)
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	var envImage string
	for _, e := range ctr.Env {
		if e.Name == "SOCKETSERVER_IMAGE" {
			envImage = e.Value
		}
	}
	if ctr.Image != "socketcluster/socketcluster:latest" || envImage != ctr.Image || ctr.Command[0] != "/manager" {
		t.Errorf("manager image %s, SOCKETSERVER_IMAGE %q, command %v", ctr.Image, envImage, ctr.Command)
	}
	if d.Spec.Template.Spec.ServiceAccountName != "socketcluster-controller-manager" {
		t.Errorf("service account %s", d.Spec.Template.Spec.ServiceAccountName)
	}
	// Metrics over HTTPS behind authentication and authorization.
	if !slices.Contains(ctr.Args, "--metrics-bind-address=:8443") || slices.Contains(ctr.Args, "--metrics-secure=false") {
		t.Errorf("args %v: want secure metrics on :8443", ctr.Args)
	}
	// The operator knows where it runs, for the SocketClusters' NetworkPolicies.
	var nsEnv *corev1.EnvVar
	for i := range ctr.Env {
		if ctr.Env[i].Name == "OPERATOR_NAMESPACE" {
			nsEnv = &ctr.Env[i]
		}
	}
	if nsEnv == nil || nsEnv.ValueFrom == nil || nsEnv.ValueFrom.FieldRef == nil || nsEnv.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("OPERATOR_NAMESPACE %+v, want the downward API's metadata.namespace", nsEnv)
	}
	var podLabels string
	for _, a := range ctr.Args {
		if v, ok := strings.CutPrefix(a, "--operator-pod-labels="); ok {
			podLabels = v
		}
	}
	sel, err := labels.Parse(podLabels)
	if podLabels == "" || err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("--operator-pod-labels=%q (%v) does not select the operator's pods %v", podLabels, err, d.Spec.Template.Labels)
	}
	if want := labels.SelectorFromSet(testOperator.PodLabels).String(); podLabels != want {
		t.Errorf("--operator-pod-labels=%q, the tests' operator runs with %q", podLabels, want)
	}
}

func TestObjectInTheWayIsLeftAlone(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	foreign := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edge-admin"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 1234}}},
	}
	if err := c.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	sc := socketCluster(t, c, ns, minimal)
	deployment(t, c, ns, anyDeployment) // the rest is still applied
	eventually(t, "name conflict", func() error {
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return conditionIs(sc, v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonNameConflict)
	})
	if msg := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDegraded).Message; !strings.Contains(msg, "Service edge-admin") {
		t.Errorf("message %q does not name the Service", msg)
	}
	after := &corev1.Service{}
	if err := c.Get(ctx, key(ns, "edge-admin"), after); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != foreign.ResourceVersion || len(after.OwnerReferences) != 0 {
		t.Errorf("foreign Service taken over: %+v", after.ObjectMeta)
	}
}
