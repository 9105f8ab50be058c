package resources

import (
	"crypto/rand"
	"encoding/hex"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// APITokenKey is the key of the generated API token Secret.
const APITokenKey = "token"

// apiTokenBytes is the entropy of a generated token (64 hex characters).
const apiTokenBytes = 32

// GeneratedAPITokenSecretName is the Secret the operator creates for a
// SocketCluster that names no API token Secret.
func GeneratedAPITokenSecretName(sc *v1alpha1.SocketCluster) string { return sc.Name + "-api-token" }

// APITokenRef is the Secret key the pods read the admin API token from:
// spec.auth.apiTokenSecretRef, or the generated Secret's. The admin API is
// never left without a token.
func APITokenRef(sc *v1alpha1.SocketCluster) v1alpha1.SecretKeyRef {
	if r := sc.Spec.Auth.APITokenSecretRef; r != nil {
		return *r
	}
	return v1alpha1.SecretKeyRef{Name: GeneratedAPITokenSecretName(sc), Key: APITokenKey}
}

// GeneratesAPIToken tells whether the operator owns the API token Secret.
func GeneratesAPIToken(sc *v1alpha1.SocketCluster) bool { return sc.Spec.Auth.APITokenSecretRef == nil }

// NewAPIToken returns a random token: 32 bytes from crypto/rand, hex-encoded.
func NewAPIToken() (string, error) {
	b := make([]byte, apiTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// APITokenSecret holds a generated admin API token. The operator creates it
// once and never rewrites it: backends keep using the token they read.
// Deleting it makes the operator generate a new one (and roll the pods).
func APITokenSecret(sc *v1alpha1.SocketCluster, token string) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: objectMeta(sc, GeneratedAPITokenSecretName(sc)),
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{APITokenKey: []byte(token)},
	}
}
