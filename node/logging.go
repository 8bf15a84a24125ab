package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// Log quieting.
const (
	// repeatWindow: an INFO line identical to one logged less than this ago
	// is held back and counted; the next one after the window says how
	// many were held back (repeated=N).
	repeatWindow = 5 * time.Minute
	repeatKeys   = 1024 // distinct lines remembered
)

// quietHandler keeps an operator's log readable:
//   - INFO lines that repeat unchanged (a partner offline for hours) are
//     logged once per repeatWindow, with the count of the ones held back;
//   - a stream the other side reset (it stopped or restarted), and any
//     stream reset while this node shuts down, is DEBUG, not WARN.
type quietHandler struct {
	h      slog.Handler
	st     *quietState
	prefix string // the attributes of WithAttrs, part of a line's identity
}

type quietState struct {
	closing *atomic.Bool
	now     func() time.Time
	mu      sync.Mutex
	seen    map[string]*seenLine
	order   []string
}

type seenLine struct {
	at   time.Time
	held int
}

func newQuietHandler(h slog.Handler, closing *atomic.Bool) *quietHandler {
	return &quietHandler{h: h, st: &quietState{closing: closing, now: time.Now, seen: map[string]*seenLine{}}}
}

func (q *quietHandler) Enabled(ctx context.Context, l slog.Level) bool { return q.h.Enabled(ctx, l) }

func (q *quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && r.Message == "stream reset" && (q.st.closing.Load() || resetByPeer(r)) {
		if !q.h.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r2 := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
		r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
		r = r2
	}
	if r.Level == slog.LevelInfo {
		held, show := q.st.repeat(q.key(r))
		if !show {
			return nil
		}
		if held > 0 {
			r = r.Clone()
			r.AddAttrs(slog.Int("repeated", held))
		}
	}
	return q.h.Handle(ctx, r)
}

// resetByPeer reports whether the record's error is the other side
// resetting or closing the stream.
func resetByPeer(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "err" {
			return true
		}
		if err, ok := a.Value.Any().(error); ok {
			found = errors.Is(err, network.ErrReset) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
				errors.Is(err, network.ErrResourceScopeClosed)
		}
		if !found {
			found = strings.Contains(a.Value.String(), "stream reset")
		}
		return false
	})
	return found
}

func (q *quietHandler) key(r slog.Record) string {
	var b strings.Builder
	b.WriteString(q.prefix)
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, "|%s=%v", a.Key, a.Value)
		return true
	})
	return b.String()
}

// repeat reports how many copies of line were held back and whether to log it now.
func (s *quietState) repeat(line string) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if e := s.seen[line]; e != nil {
		if now.Sub(e.at) < repeatWindow {
			e.held++
			return 0, false
		}
		held := e.held
		e.at, e.held = now, 0
		return held, true
	}
	s.seen[line] = &seenLine{at: now}
	s.order = append(s.order, line)
	if len(s.order) > repeatKeys {
		delete(s.seen, s.order[0])
		s.order = s.order[1:]
	}
	return 0, true
}

func (q *quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(q.prefix)
	for _, a := range as {
		fmt.Fprintf(&b, "%s=%v|", a.Key, a.Value)
	}
	return &quietHandler{h: q.h.WithAttrs(as), st: q.st, prefix: b.String()}
}

func (q *quietHandler) WithGroup(name string) slog.Handler {
	return &quietHandler{h: q.h.WithGroup(name), st: q.st, prefix: q.prefix + name + "."}
}

// identifyOptional makes libp2p's identify optional for peers, as Ferry
// needs nothing it tells (docs/protocols.md, "Writing a peer"): go-libp2p
// logs `failed to identify peer` at WARN for every connection to a peer
// that does not speak identify at all (a js-libp2p partner built without
// it), which is DEBUG here. Identify that a peer offers and then fails
// (a timeout, a malformed answer) stays a WARN.
type identifyOptional struct{ slog.Handler }

func (h identifyOptional) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && r.Message == "failed to identify peer" && identifyNotSpoken(r) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r2 := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
		r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
		r = r2
	}
	return h.Handler.Handle(ctx, r)
}

func (h identifyOptional) WithAttrs(as []slog.Attr) slog.Handler {
	return identifyOptional{h.Handler.WithAttrs(as)}
}

func (h identifyOptional) WithGroup(name string) slog.Handler {
	return identifyOptional{h.Handler.WithGroup(name)}
}

// identifyNotSpoken reports whether the record's error is the peer
// answering that it does not speak identify (multistream-select's "na":
// go-multistream's ErrNotSupported, matched by its text so that the module
// stays an indirect dependency; interop/ fails if the text changes).
func identifyNotSpoken(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" || a.Key == "err" {
			found = strings.Contains(a.Value.String(), "protocols not supported")
			return false
		}
		return true
	})
	return found
}
