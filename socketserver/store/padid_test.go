package store

import (
	"math"
	"testing"
)

// Lua compares publish ids as strings, so they must sort like the numbers.
func TestPadIDSortsLikeNumbers(t *testing.T) {
	ids := []uint64{0, 9, 10, 1<<53 + 1, math.MaxUint64 - 1, math.MaxUint64}
	for i, id := range ids {
		if p := padID(id); len(p) != 20 {
			t.Fatalf("padID(%d) = %q: want 20 digits", id, p)
		}
		if i > 0 && padID(ids[i-1]) >= padID(id) {
			t.Fatalf("padID(%d) = %q does not sort before padID(%d) = %q", ids[i-1], padID(ids[i-1]), id, padID(id))
		}
	}
	if padID(42) != "00000000000000000042" {
		t.Fatalf("padID(42) = %q", padID(42))
	}
}
