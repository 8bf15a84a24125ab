package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: every
// node, stream and service must stop what it started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
