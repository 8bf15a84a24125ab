package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

func TestQuietLogs(t *testing.T) {
	var buf bytes.Buffer
	closing := &atomic.Bool{}
	q := newQuietHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}), closing)
	clock := time.Unix(1000, 0)
	q.st.now = func() time.Time { return clock }
	log := slog.New(q).With("node", "A")
	count := func(s string) int { return strings.Count(buf.String(), s) }

	// An INFO line repeated every 30 s is logged once per window, then with the count.
	for range 12 {
		log.Info("catch-up incomplete; will try again", "err", "no peer to ask is connected")
		clock = clock.Add(30 * time.Second)
	}
	if n := count("catch-up incomplete"); n != 2 {
		t.Fatalf("%d lines of a repeated INFO, want 2 (one per 5 min):\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "repeated=9") {
		t.Fatalf("the second line does not say how many were held back:\n%s", buf.String())
	}
	// Different attributes are different lines; other nodes' loggers too.
	log.Info("catch-up incomplete; will try again", "err", "other")
	slog.New(q).With("node", "B").Info("catch-up incomplete; will try again", "err", "no peer to ask is connected")
	if n := count("catch-up incomplete"); n != 4 {
		t.Fatalf("distinct lines were held back:\n%s", buf.String())
	}
	// Warnings are never held back.
	log.Warn("disk", "err", "x")
	log.Warn("disk", "err", "x")
	if n := count("msg=disk"); n != 2 {
		t.Fatalf("a repeated WARN was held back")
	}

	// A stream the peer reset is not a warning; a real failure still is.
	log.Warn("stream reset", "protocol", "/ferry/sync/1.0.0", "err", fmt.Errorf("read: %w", network.ErrReset))
	if strings.Contains(buf.String(), "msg=\"stream reset\"") {
		t.Fatalf("a peer's reset is logged as WARN:\n%s", buf.String())
	}
	log.Warn("stream reset", "protocol", "/ferry/sync/1.0.0", "err", errors.New("frame over the limit"))
	if count(`msg="stream reset"`) != 1 {
		t.Fatalf("a real stream failure is not a WARN:\n%s", buf.String())
	}
	// While the node shuts down, every stream reset is quiet.
	closing.Store(true)
	log.Warn("stream reset", "protocol", "/ferry/sync/1.0.0", "err", errors.New("context canceled"))
	if count(`msg="stream reset"`) != 1 {
		t.Fatalf("a stream reset during shutdown is a WARN:\n%s", buf.String())
	}
	_ = q.Handle(context.Background(), slog.NewRecord(clock, slog.LevelError, "boom", 0))
	if count("msg=boom") != 1 {
		t.Fatal("an error was lost")
	}
}

// TestIdentifyOptional: a peer that does not speak identify (a js-libp2p
// partner without it) is no warning; one whose identify fails otherwise is.
func TestIdentifyOptional(t *testing.T) {
	var buf bytes.Buffer
	h := identifyOptional{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})}
	log := slog.New(h)
	notSpoken := fmt.Errorf("multistream mux select protocol failed: %w", errors.New("protocols not supported: [/ipfs/id/1.0.0]"))
	log.Warn("failed to identify peer", "peer", "12D3KooW...", "error", notSpoken)
	if buf.Len() != 0 {
		t.Fatalf("a peer without identify is logged above DEBUG:\n%s", buf.String())
	}
	log.Warn("failed to identify peer", "peer", "12D3KooW...", "error", errors.New("context deadline exceeded"))
	if !strings.Contains(buf.String(), "level=WARN") {
		t.Fatalf("an identify that failed otherwise is not a WARN:\n%s", buf.String())
	}
	buf.Reset()
	dbg := slog.New(identifyOptional{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})})
	dbg.Warn("failed to identify peer", "peer", "12D3KooW...", "error", notSpoken)
	if !strings.Contains(buf.String(), "level=DEBUG") || !strings.Contains(buf.String(), "protocols not supported") {
		t.Fatalf("at debug, a peer without identify is not logged at DEBUG with its error:\n%s", buf.String())
	}
}
