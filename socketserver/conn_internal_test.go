package socketserver

import (
	"testing"
	"time"
)

// A busy device keeps its read goroutine between frames; one that sent a
// lone frame (a HELLO: nothing before it; a heartbeat) parks soon after.
func TestParkDelay(t *testing.T) {
	for _, tc := range []struct {
		gap, want time.Duration
	}{
		{100 * time.Millisecond, parkAfter},
		{parkAfter - 1, parkAfter},
		{parkAfter, quietParkAfter},
		{30 * time.Second, quietParkAfter},
		{time.Duration(time.Now().UnixNano()), quietParkAfter}, // the HELLO
	} {
		if got := parkDelay(tc.gap); got != tc.want {
			t.Errorf("parkDelay(%v) = %v, want %v", tc.gap, got, tc.want)
		}
	}
}
