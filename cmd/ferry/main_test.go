package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a command leaves goroutines behind.
func TestMain(m *testing.M) {
	// os/signal's watcher starts once per process and never stops.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("os/signal.signal_recv"))
}
