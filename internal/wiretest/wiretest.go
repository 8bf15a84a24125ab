// Package wiretest speaks the delivery protocols by hand, for tests that
// send what a real sender never would (forged, misaddressed or refused
// changes) and look at what the receiver answers.
package wiretest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// ErrReset is returned when the receiver reset the stream instead of
// answering.
var ErrReset = errors.New("stream reset before an answer")

// Batch encodes a Batch frame.
func Batch(epoch uint64, lane uint32, after uint64, envs ...*pb.Envelope) []byte {
	b, err := proto.Marshal(&pb.Batch{Epoch: epoch, Lane: lane, After: after, Envelopes: envs})
	if err != nil {
		panic(err)
	}
	return b
}

// Send opens a stream of protocol id from h to `to`, writes the frames,
// and returns the position reports the receiver sent first and its first
// answer (a reply that is not a report), or ErrReset.
func Send(h host.Host, to peer.ID, id protocol.ID, frames ...[]byte) (reports []*pb.Reply, answer *pb.Reply, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, to, id)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream: %w", err)
	}
	defer s.Close()
	fw := protocols.NewFrameWriter(s, 64<<20)
	for _, f := range frames {
		if err := fw.WriteRaw(f); err != nil {
			return nil, nil, err
		}
	}
	if err := fw.Flush(); err != nil {
		return nil, nil, err
	}
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr := protocols.NewFrameReader(s, protocols.MaxReplyBytes)
	for {
		r := &pb.Reply{}
		if err := fr.Read(r); err != nil {
			return reports, nil, fmt.Errorf("%w: %w", ErrReset, err)
		}
		if r.Report {
			reports = append(reports, r)
			continue
		}
		return reports, r, nil
	}
}
