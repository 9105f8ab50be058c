package resources_test

import (
	"encoding/hex"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestAPITokenSecret(t *testing.T) {
	sc := defaulted(t, minimal)
	s := resources.APITokenSecret(sc, "t0k3n")
	assertOwned(t, s.OwnerReferences, sc)
	if s.Name != "edge-api-token" || s.Namespace != "prod" || s.Type != corev1.SecretTypeOpaque {
		t.Errorf("secret %s/%s type %s", s.Namespace, s.Name, s.Type)
	}
	if !reflect.DeepEqual(s.Data, map[string][]byte{"token": []byte("t0k3n")}) || s.StringData != nil {
		t.Errorf("data %v stringData %v", s.Data, s.StringData)
	}
	if !reflect.DeepEqual(s.Labels, resources.Labels(sc)) {
		t.Errorf("labels %v", s.Labels)
	}
}

func TestNewAPIToken(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok, err := resources.NewAPIToken()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := hex.DecodeString(tok)
		if err != nil || len(raw) < 32 {
			t.Fatalf("token %q: %d bytes (%v), want at least 32 random bytes, hex", tok, len(raw), err)
		}
		if seen[tok] {
			t.Fatalf("token %q twice", tok)
		}
		seen[tok] = true
	}
}

func TestAPITokenRef(t *testing.T) {
	sc := defaulted(t, minimal)
	if got := resources.APITokenRef(sc); got != (v1alpha1.SecretKeyRef{Name: "edge-api-token", Key: "token"}) || !resources.GeneratesAPIToken(sc) {
		t.Errorf("without apiTokenSecretRef: %+v, generated %v", got, resources.GeneratesAPIToken(sc))
	}
	sc.Spec.Auth.APITokenSecretRef = &v1alpha1.SecretKeyRef{Name: "api", Key: "bearer"}
	if got := resources.APITokenRef(sc); got != *sc.Spec.Auth.APITokenSecretRef || resources.GeneratesAPIToken(sc) {
		t.Errorf("with apiTokenSecretRef: %+v, generated %v", got, resources.GeneratesAPIToken(sc))
	}
}
