// Package leaks holds the goleak options every package's TestMain uses.
//
// One kind of goroutine is not ours to stop: libp2p's mocknet hands a
// stream to a connection that is still being made while the mocknet
// closes, and that stream's goroutines (its transport, and whoever reads or
// writes it, such as gossipsub's per-peer loops) stay blocked on the
// stream's pipes after the mocknet closed (seen once in four CI runs of
// the node package). A goroutine with a mocknet stream anywhere in its
// stack is ignored; every other goroutine a test leaves is a failure.
package leaks

import "go.uber.org/goleak"

// Options are goleak's options for a package's tests.
func Options() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/net/mock.(*stream).transport"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/net/mock.(*stream).Read"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/net/mock.(*stream).Write"),
	}
}
