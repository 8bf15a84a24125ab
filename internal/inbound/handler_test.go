package inbound

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// A stream from a peer that Admit refuses is reset when it opens: the
// service never sees it and nothing of it is read; an admitted peer's is
// served.
func TestHandleRefusesAtOpen(t *testing.T) {
	server, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Close() })
	var allowed atomic.Value
	allowed.Store(peer.ID(""))
	var served atomic.Int64
	const id = protocol.ID("/ferry-test/admit/1.0.0")
	Handle(server, id, "ferry.test", 1<<10, func(p peer.ID) bool { return p == allowed.Load().(peer.ID) }, quiet,
		func(s network.Stream) error {
			served.Add(1)
			var b [1]byte
			_, err := s.Read(b[:])
			return err
		})

	for _, admitted := range []bool{false, true} {
		client, err := libp2p.New(libp2p.NoListenAddrs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		if admitted {
			allowed.Store(client.ID())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
			t.Fatal(err)
		}
		s, err := client.NewStream(ctx, server.ID(), id)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		before := served.Load()
		// A frame claiming a megabyte, and a byte of it.
		if _, err := s.Write(append(binary.AppendUvarint(nil, 1_050_000), 1)); err != nil && !errors.Is(err, network.ErrReset) {
			t.Fatal(err)
		}
		var b [1]byte
		_, err = s.Read(b[:])
		switch {
		case !admitted && !errors.Is(err, network.ErrReset):
			t.Fatalf("a refused peer's stream ended with %v, want a reset", err)
		case !admitted && served.Load() != before:
			t.Fatal("the service saw a refused peer's stream")
		case admitted && served.Load() != before+1:
			t.Fatalf("an admitted peer's stream was not served (read: %v)", err)
		}
		_ = s.Reset()
	}
}
