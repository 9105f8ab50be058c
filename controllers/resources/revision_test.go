package resources_test

import (
	"maps"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestRevisionDeployment(t *testing.T) {
	sc := defaulted(t, minimal)
	d, rev := resources.RevisionDeployment(sc, "img:a", "h", 5)
	if len(rev) != 10 || d.Name != "edge-"+rev || *d.Spec.Replicas != 5 {
		t.Fatalf("revision %q, name %s, replicas %d", rev, d.Name, *d.Spec.Replicas)
	}
	assertOwned(t, d.OwnerReferences, sc)
	sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels)
	if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Fatalf("selector %v does not select its own pods %v", sel, d.Spec.Template.Labels)
	}
	if d.Spec.Template.Labels[resources.LabelRevision] != rev || d.Labels[resources.LabelRevision] != rev {
		t.Errorf("revision label missing: template %v, deployment %v", d.Spec.Template.Labels, d.Labels)
	}
	// The template is the Surge Deployment's, plus the label.
	plain := resources.Deployment(sc, "img:a", "h").Spec.Template
	got := d.Spec.Template.DeepCopy()
	delete(got.Labels, resources.LabelRevision)
	if !maps.Equal(got.Labels, plain.Labels) || got.Spec.Containers[0].Image != "img:a" {
		t.Errorf("template differs from the Deployment's: %v vs %v", got.Labels, plain.Labels)
	}

	// Same template, same revision; the replicas are not part of it.
	sc2 := sc.DeepCopy()
	sc2.Spec.Replicas = new(int32)
	if _, r := resources.RevisionDeployment(sc2, "img:a", "h", 0); r != rev {
		t.Errorf("replicas changed the revision: %s, want %s", r, rev)
	}
	// A new image or a rotated Secret is a new revision.
	for what, r := range map[string]string{
		"image":       second(resources.RevisionDeployment(sc, "img:b", "h", 5)),
		"secret hash": second(resources.RevisionDeployment(sc, "img:a", "h2", 5)),
	} {
		if r == rev {
			t.Errorf("a new %s kept revision %s", what, rev)
		}
	}
}

func second[A, B any](_ A, b B) B { return b }

func TestPublicSelector(t *testing.T) {
	sc := defaulted(t, minimal)
	d, rev := resources.RevisionDeployment(sc, "img:a", "h", 3)
	old, _ := resources.RevisionDeployment(sc, "img:old", "h", 3)
	legacy := resources.Deployment(sc, "img:old", "h")

	all := labels.SelectorFromSet(resources.Service(sc, "").Spec.Selector)
	active := labels.SelectorFromSet(resources.Service(sc, rev).Spec.Selector)
	for _, tc := range []struct {
		what        string
		pod         map[string]string
		all, active bool
	}{
		{"pod of the active revision", d.Spec.Template.Labels, true, true},
		{"pod of an old revision", old.Spec.Template.Labels, true, false},
		{"pod of the Surge Deployment", legacy.Spec.Template.Labels, true, false},
	} {
		if got := all.Matches(labels.Set(tc.pod)); got != tc.all {
			t.Errorf("Service without revision selects %s: %v, want %v", tc.what, got, tc.all)
		}
		if got := active.Matches(labels.Set(tc.pod)); got != tc.active {
			t.Errorf("Service of revision %s selects %s: %v, want %v", rev, tc.what, got, tc.active)
		}
	}
}
