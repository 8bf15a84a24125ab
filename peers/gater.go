package peers

import (
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ConnGater is the connection gater of the node's host: the peer book's
// answers (members only when `members` is set, never a peer of another
// network or a blocked one), and for a connection another peer opens, the
// bound of connections.max (Keeper.Admit), once the keeper that holds it
// is built (SetKeeper; the host is built before it).
type ConnGater struct {
	*Book
	keeper atomic.Pointer[Keeper]
}

// NewConnGater gates with book; the bound applies from SetKeeper on.
func NewConnGater(book *Book) *ConnGater { return &ConnGater{Book: book} }

// SetKeeper makes k hold inbound connections within connections.max.
func (g *ConnGater) SetKeeper(k *Keeper) { g.keeper.Store(k) }

// InterceptSecured refuses a peer the book refuses, and a connection
// another peer opened that Keeper.Admit does not take.
func (g *ConnGater) InterceptSecured(dir network.Direction, p peer.ID, addrs network.ConnMultiaddrs) bool {
	if !g.Book.InterceptSecured(dir, p, addrs) {
		return false
	}
	if dir != network.DirInbound {
		return true
	}
	k := g.keeper.Load()
	return k == nil || k.Admit(p)
}
