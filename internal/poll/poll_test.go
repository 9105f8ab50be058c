package poll

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder stands in for a test so that a failing wait can be observed.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	panic(r) // Fatalf does not return; neither may this.
}

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	Until(t, 10*time.Second, "third call", func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Fatalf("check called %d times, want 3", calls)
	}
}

func TestUntilFailsWithTheLastError(t *testing.T) {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != r {
				t.Fatalf("want the wait to fail the test, got %v", p)
			}
		}()
		Until(r, 50*time.Millisecond, "never", True(func() bool { return false }))
	}()
	if !strings.Contains(r.failed, "never: not after 50ms: condition still false") {
		t.Fatalf("failure message %q", r.failed)
	}
}
