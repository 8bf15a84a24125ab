// Package wait is the one way Ferry's tests wait: poll a condition until it
// holds or a deadline passes, never a bare sleep. It imports nothing of
// Ferry, so the tests of any package may use it without an import cycle
// (internal/testnet imports node, which imports every service).
package wait

import (
	"testing"
	"time"
)

// For polls cond until it holds, 1 ms apart at first and at most 50 ms
// apart; after timeout it fails the test, naming what it waited for.
func For(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
}
