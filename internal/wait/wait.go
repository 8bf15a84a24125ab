// Package wait is the one way Ferry's tests wait: poll a condition until it
// holds or a deadline passes, never a bare sleep. It imports nothing of
// Ferry, so the tests of any package may use it without an import cycle
// (internal/testnet imports node, which imports every service).
package wait

import (
	"errors"
	"testing"
	"time"
)

// For polls cond until it holds, 1 ms apart at first and at most 50 ms
// apart (never less than cond itself took, so that a costly look takes at
// most half the time); after timeout it fails the test, naming what it
// waited for.
func For(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Until(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// errNotYet is For's condition not holding: nothing to add to what.
var errNotYet = errors.New("not yet")

// Until polls check as For polls cond, until check returns nil; after
// timeout it fails the test, naming what it waited for and check's last
// error (how things stood when it gave up).
func Until(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		start := time.Now()
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("timed out after %v waiting until %s", timeout, what)
			}
			t.Fatalf("timed out after %v waiting until %s: %v", timeout, what, err)
		}
		time.Sleep(max(pause, time.Since(start)))
		pause = min(pause*2, 50*time.Millisecond)
	}
}
