package peers

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// unsetConn is a connection whose transport leaves the open time unset, as
// libp2p's mocknet does.
type unsetConn struct {
	network.Conn
	id string
}

func (c unsetConn) ID() string              { return c.id }
func (c unsetConn) Stat() network.ConnStats { return network.ConnStats{} }

// TestConnectionAgeWithoutAnOpenTime: a connection without the transport's
// open time ages from when the node first saw it, and keeps that time;
// before, every mocknet connection counted as old, and trim closed what it
// had just dialed (a 1,000-node mocknet churned thousands of connections
// every 10 s).
func TestConnectionAgeWithoutAnOpenTime(t *testing.T) {
	g := NewGate(GateDeps{})
	c := unsetConn{id: "c1"}
	before := time.Now()
	at := g.openedAt(c)
	if at.Before(before) || time.Since(at) > time.Minute {
		t.Fatalf("opened at %v: want from this test (%v on)", at, before)
	}
	if again := g.openedAt(c); !again.Equal(at) {
		t.Fatalf("opened at %v, then %v: want the same time", at, again)
	}
	if other := g.openedAt(unsetConn{id: "c2"}); other.Before(at) {
		t.Fatalf("a second connection seen later opened at %v, before the first (%v)", other, at)
	}
	// A transport's own time wins.
	stamp := time.Now().Add(-time.Hour)
	if got := g.openedAt(stampedConn{unsetConn{id: "c3"}, stamp}); !got.Equal(stamp) {
		t.Fatalf("opened at %v: want the transport's %v", got, stamp)
	}
}

type stampedConn struct {
	unsetConn
	at time.Time
}

func (c stampedConn) Stat() network.ConnStats {
	var s network.ConnStats
	s.Opened = c.at
	return s
}
