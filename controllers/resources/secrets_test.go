package resources_test

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestSecretRefs(t *testing.T) {
	sc := defaulted(t, minimal+`
  listeners: {tls: {secretName: edge-tls}}
`)
	sc.Spec.Redis.PasswordSecretRef = &v1alpha1.SecretKeyRef{Name: "redis", Key: "password"}
	want := []v1alpha1.SecretKeyRef{
		{Name: "device-key", Key: "key"}, {Name: "edge-api-token", Key: "token"}, {Name: "redis", Key: "password"},
		{Name: "edge-tls", Key: "tls.crt"}, {Name: "edge-tls", Key: "tls.key"},
	}
	if got := resources.SecretRefs(sc); !reflect.DeepEqual(got, want) {
		t.Errorf("refs %v", got)
	}
	sc.Spec.Auth.APITokenSecretRef = &v1alpha1.SecretKeyRef{Name: "api", Key: "bearer"}
	if got := resources.SecretRefs(sc)[1]; got != *sc.Spec.Auth.APITokenSecretRef {
		t.Errorf("api token ref %v, want the spec's", got)
	}
}

func TestSecretHash(t *testing.T) {
	refs := []v1alpha1.SecretKeyRef{{Name: "device-key", Key: "key"}, {Name: "api", Key: "token"}}
	secrets := func(key, token string) map[string]*corev1.Secret {
		return map[string]*corev1.Secret{
			"device-key": {Data: map[string][]byte{"key": []byte(key), "other": []byte("ignored")}},
			"api":        {Data: map[string][]byte{"token": []byte(token)}},
		}
	}
	base := resources.SecretHash(refs, secrets("k1", "t1"))
	if base != resources.SecretHash(refs, secrets("k1", "t1")) {
		t.Fatal("hash is not stable")
	}
	unrelated := secrets("k1", "t1")
	unrelated["device-key"].Data["other"] = []byte("changed")
	for name, s := range map[string]map[string]*corev1.Secret{
		"rotated device key": secrets("k2", "t1"),
		"rotated api token":  secrets("k1", "t2"),
		"values swapped":     secrets("t1", "k1"),
		"secret missing":     {"device-key": secrets("k1", "t1")["device-key"]},
	} {
		if resources.SecretHash(refs, s) == base {
			t.Errorf("%s: hash unchanged, pods would not roll", name)
		}
	}
	if resources.SecretHash(refs, unrelated) != base {
		t.Error("a key the pods do not read changed the hash")
	}
}
