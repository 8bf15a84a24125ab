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

	"github.com/ferrynet/ferry/internal/lifecycle"
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
	var g lifecycle.Group
	t.Cleanup(g.Close)
	Handle(server, &g, id, "ferry.test", 1<<10, func(p peer.ID) bool { return p == allowed.Load().(peer.ID) }, quiet,
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

// Every handler call is counted in the owner's group: Close waits for a
// call that is running, and once Close has begun a new stream is reset
// before serve sees it.
func TestHandleCountedByGroup(t *testing.T) {
	server, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Close() })
	client, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	var g lifecycle.Group
	const id = protocol.ID("/ferry-test/group/1.0.0")
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var served atomic.Int64
	Handle(server, &g, id, "ferry.test", 1<<10, nil, quiet, func(s network.Stream) error {
		served.Add(1)
		entered <- struct{}{}
		<-release
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		t.Fatal(err)
	}
	open := func() network.Stream {
		s, err := client.NewStream(ctx, server.ID(), id)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		// The handler runs once the stream's first bytes arrive.
		if _, err := s.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := open()
	defer func() { _ = first.Reset() }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the handler was not called")
	}
	closed := make(chan struct{})
	go func() { g.Close(); close(closed) }()
	for !g.Closed() {
		time.Sleep(time.Millisecond)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a handler call was running")
	case <-time.After(50 * time.Millisecond):
	}
	second := open()
	defer func() { _ = second.Reset() }()
	var b [1]byte
	if _, err := second.Read(b[:]); !errors.Is(err, network.ErrReset) {
		t.Fatalf("a stream opened after Close began ended with %v, want a reset", err)
	}
	if n := served.Load(); n != 1 {
		t.Fatalf("serve ran %d times, want 1", n)
	}
	close(release)
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not return once the handler call ended")
	}
}
