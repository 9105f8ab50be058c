package resources_test

import (
	"testing"

	"github.com/socketcluster/socketcluster/controllers/resources"
)

func TestDeletionCost(t *testing.T) {
	for conns, want := range map[int64]string{0: "0", 1500: "1500", -3: "0", 1 << 40: "2147483647"} {
		if got := resources.DeletionCost(conns); got != want {
			t.Errorf("DeletionCost(%d) = %s, want %s", conns, got, want)
		}
	}
	for _, tc := range []struct {
		current, want string
		stale         bool
	}{
		{"", "0", true},         // never set
		{"junk", "5", true},     // someone else's value
		{"1000", "1090", false}, // within 10%
		{"1000", "1200", true},  // beyond
		{"3", "12", false},      // within 10 connections
		{"0", "11", true},       // beyond
		{"2000", "0", true},     // a pod that emptied
	} {
		if got := resources.DeletionCostStale(tc.current, tc.want); got != tc.stale {
			t.Errorf("DeletionCostStale(%q, %q) = %v, want %v", tc.current, tc.want, got, tc.stale)
		}
	}
}
