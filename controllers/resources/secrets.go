package resources

import (
	"crypto/sha256"
	"encoding/hex"

	corev1 "k8s.io/api/core/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

// SecretRefs lists every Secret key the pods read, in a fixed order. The
// API token is always one of them (see APITokenRef).
func SecretRefs(sc *v1alpha1.SocketCluster) []v1alpha1.SecretKeyRef {
	var refs []v1alpha1.SecretKeyRef
	apiToken := APITokenRef(sc)
	for _, r := range []*v1alpha1.SecretKeyRef{sc.Spec.Auth.DeviceKeySecretRef, &apiToken, sc.Spec.Redis.PasswordSecretRef} {
		if r != nil {
			refs = append(refs, *r)
		}
	}
	if tls := sc.Spec.Listeners.TLS; tls != nil {
		refs = append(refs,
			v1alpha1.SecretKeyRef{Name: tls.SecretName, Key: corev1.TLSCertKey},
			v1alpha1.SecretKeyRef{Name: tls.SecretName, Key: corev1.TLSPrivateKeyKey})
	}
	return refs
}

// SecretHash digests the referenced values. It goes into the pod template, so
// rotating a Secret rolls the pods: the server reads its keys and the Redis
// password only at start.
func SecretHash(refs []v1alpha1.SecretKeyRef, secrets map[string]*corev1.Secret) string {
	h := sha256.New()
	for _, r := range refs {
		var v []byte
		if s := secrets[r.Name]; s != nil {
			v = s.Data[r.Key]
		}
		// Length-prefixed fields, so that no two inputs hash alike.
		for _, f := range [][]byte{[]byte(r.Name), []byte(r.Key), v} {
			h.Write([]byte{byte(len(f) >> 24), byte(len(f) >> 16), byte(len(f) >> 8), byte(len(f))})
			h.Write(f)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}
