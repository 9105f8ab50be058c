package resources_test

import (
	"os"
	"testing"

	apiextensions "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
)

const crdFile = "../../config/crd/bases/sockets.socketcluster.io_socketclusters.yaml"

// defaulted returns the SocketCluster the API server would store for the
// given manifest: the defaults come from the generated CRD itself, so the
// builders are tested on exactly what they get in a cluster.
func defaulted(t *testing.T, manifest string) *v1alpha1.SocketCluster {
	t.Helper()
	raw, err := os.ReadFile(crdFile)
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
		t.Fatal(err)
	}
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(crd.Spec.Versions[0].Schema.OpenAPIV3Schema, &internal, nil); err != nil {
		t.Fatal(err)
	}
	schema, err := structuralschema.NewStructural(&internal)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatal(err)
	}
	defaulting.Default(obj, schema)
	sc := &v1alpha1.SocketCluster{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(obj, sc, true); err != nil {
		t.Fatal(err)
	}
	return sc
}

// minimal is the smallest valid SocketCluster.
const minimal = `
apiVersion: sockets.socketcluster.io/v1alpha1
kind: SocketCluster
metadata: {name: edge, namespace: prod, uid: 0d7c1c0e-5b7a-4f43-9a53-0c3bbd2e9d11}
spec:
  redis: {addresses: ["redis:6379"]}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
`
