package admin

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/internal/leaks"
)

// TestMain fails the package if a test leaves goroutines behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaks.Options()...) }
