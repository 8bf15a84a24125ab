package reviewgroup

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/internal/leaks"
)

// Every goroutine the package's tests start is stopped by the end: raft's,
// the transport's, the groups' and libp2p's.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaks.Options()...) }
