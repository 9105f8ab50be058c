package main

import (
	"reflect"
	"testing"

	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestOperatorPeer(t *testing.T) {
	got, err := operatorPeer("socketcluster-system", "app.kubernetes.io/name=socketcluster-operator,app.kubernetes.io/instance=sc")
	want := resources.Operator{Namespace: "socketcluster-system", PodLabels: map[string]string{
		"app.kubernetes.io/name": "socketcluster-operator", "app.kubernetes.io/instance": "sc",
	}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, %v; want %+v", got, err, want)
	}
	if got, err := operatorPeer("ops", ""); err != nil || got.Namespace != "ops" || got.PodLabels != nil {
		t.Errorf("no labels: %+v, %v", got, err)
	}
	for _, bad := range []string{"app in (a,b)", "app!=x", "bad key!=x", "a=b=c"} {
		if _, err := operatorPeer("ops", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
