package review

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine the package's tests start is stopped by the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
