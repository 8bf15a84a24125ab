package inbound

import (
	"fmt"
	"log/slog"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry/internal/lifecycle"
)

// ServeFunc serves one inbound stream. It returns nil when the stream ended
// cleanly (it is then closed) or an error (the stream is reset and the error
// logged).
type ServeFunc func(s network.Stream) error

// Admit decides, when a stream opens and before anything is read from it,
// whether its peer may use the protocol at all (a partner, a member, the
// reviewer). nil admits every peer (hello, whose frames are small).
type Admit func(p peer.ID) bool

// Handle registers serve for protocol id with an admission check, the
// resource manager service name, a memory reservation for the stream's
// buffers, a recover that resets the stream, and Reset on every error path.
// A peer that admit refuses has its stream reset at open: nothing of it is
// read and nothing is allocated for it.
//
// Each handler call is counted in g, the owner's group, so the owner's
// Close waits for it; once Close has begun a new stream is reset unread.
// The owner's Close removes the handler and makes running calls return (a
// cancelled context that resets their streams) before it calls g.Close.
func Handle(h host.Host, g *lifecycle.Group, id protocol.ID, service string, reserve int, admit Admit, log *slog.Logger, serve ServeFunc) {
	h.SetStreamHandler(id, func(s network.Stream) {
		if !g.Add() {
			_ = s.Reset()
			return
		}
		defer g.Done()
		remote := s.Conn().RemotePeer()
		if admit != nil && !admit(remote) {
			log.Debug("stream refused at open: peer not admitted", "protocol", id, "peer", remote)
			_ = s.Reset()
			return
		}
		defer func() {
			if r := recover(); r != nil {
				log.Error("stream handler panicked", "protocol", id, "peer", remote, "panic", r)
				_ = s.Reset()
			}
		}()
		if err := s.Scope().SetService(service); err != nil {
			log.Debug("attach stream to service", "protocol", id, "peer", remote, "err", err)
			_ = s.Reset()
			return
		}
		if err := s.Scope().ReserveMemory(reserve, network.ReservationPriorityAlways); err != nil {
			log.Warn("stream refused: no memory", "protocol", id, "peer", remote, "err", err)
			_ = s.Reset()
			return
		}
		defer s.Scope().ReleaseMemory(reserve)
		if err := serve(s); err != nil {
			log.Warn("stream reset", "protocol", id, "peer", remote, "err", err)
			_ = s.Reset()
			return
		}
		_ = s.Close()
	})
}

// RefusedError is an inbound message refused before anything was written:
// the stream is reset.
type RefusedError struct {
	Reason string
	Err    error
}

func (e *RefusedError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("refused: %s: %v", e.Reason, e.Err)
	}
	return "refused: " + e.Reason
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Refuse builds a RefusedError.
func Refuse(reason string, err error) error { return &RefusedError{Reason: reason, Err: err} }
