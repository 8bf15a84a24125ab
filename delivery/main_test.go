package delivery

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/internal/leaks"
)

// Every goroutine the package's tests start is stopped by the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaks.Options()...) }
