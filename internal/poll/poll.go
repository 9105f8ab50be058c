// Package poll waits, in tests, for a condition that other goroutines,
// processes or a controller bring about. Tests wait on conditions rather
// than sleep for a guessed time, so they hold on a slow or loaded machine.
package poll

import (
	"testing"
	"time"
)

// Until calls check until it returns nil, and fails t with check's last error
// once timeout has passed. The poll interval grows with the timeout (10 ms to
// 500 ms), so short waits react quickly and long ones do not busy a cluster.
func Until(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	interval := min(max(timeout/1000, 10*time.Millisecond), 500*time.Millisecond)
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// errNotYet is what a boolean condition reports while it does not hold.
type errNotYet struct{}

func (errNotYet) Error() string { return "condition still false" }

// True adapts a boolean condition to Until.
func True(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errNotYet{}
	}
}
