package wait

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// fatalTB records a Fatalf and ends its goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls fn with a fatalTB on a goroutine of its own and returns what it
// failed with ("" if it returned).
func run(fn func(tb testing.TB)) string {
	f := &fatalTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f.msg
}

func TestForReturnsOnceTheConditionHolds(t *testing.T) {
	n := 0
	if msg := run(func(tb testing.TB) {
		For(tb, 10*time.Second, "the third look", func() bool { n++; return n == 3 })
	}); msg != "" || n != 3 {
		t.Fatalf("failed %q after %d looks; want it to return at the third", msg, n)
	}
}

func TestForFailsAtTheDeadlineNamingWhat(t *testing.T) {
	msg := run(func(tb testing.TB) { For(tb, 20*time.Millisecond, "pigs fly", func() bool { return false }) })
	if msg != "timed out after 20ms waiting until pigs fly" {
		t.Fatalf("failed with %q", msg)
	}
}

func TestUntilFailsWithTheLastError(t *testing.T) {
	n := 0
	msg := run(func(tb testing.TB) {
		Until(tb, 20*time.Millisecond, "the count is done", func() error { n++; return fmt.Errorf("%d looks", n) })
	})
	if want := fmt.Sprintf("timed out after 20ms waiting until the count is done: %d looks", n); msg != want || n < 2 {
		t.Fatalf("failed with %q; want %q after more than one look", msg, want)
	}
}

// A look that takes longer than the pause is not repeated back to back:
// the pause is at least as long as the look.
func TestUntilPausesAtLeastAsLongAsALook(t *testing.T) {
	var looks []time.Time
	start := time.Now()
	msg := run(func(tb testing.TB) {
		Until(tb, 10*time.Second, "three looks", func() error {
			looks = append(looks, time.Now())
			time.Sleep(20 * time.Millisecond) // stands for a slow look (a listing over NATS): time passing is the point
			if len(looks) == 3 {
				return nil
			}
			return errors.New("fewer than three")
		})
	})
	if msg != "" {
		t.Fatal(msg)
	}
	// Three looks of 20 ms and two pauses of at least 20 ms.
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Fatalf("three 20 ms looks took %v; want the pauses at least as long as a look", took)
	}
}
