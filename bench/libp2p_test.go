package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

const rawProto = "/ferry-bench/raw/1"

func rawHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.DisableRelay(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

type rawResult struct {
	N       int
	Elapsed time.Duration // first write to the last ack
	Check   string
	Failed  bool
}

func (r rawResult) MsgsPerSec() float64 { return float64(r.N) / r.Elapsed.Seconds() }

// writeFrame appends one varint-framed message to w.
func writeFrame(w *bufio.Writer, p []byte) error {
	var l [binary.MaxVarintLen64]byte
	if _, err := w.Write(l[:binary.PutUvarint(l[:], uint64(len(p)))]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > 1<<20 {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err = io.ReadFull(r, buf)
	return buf, err
}

// rawLibp2p is the ceiling Ferry's stream layer runs on: one long-lived
// stream, n varint-framed 256-byte messages (an 8-byte sequence number
// first), each acked by the receiver on the same stream with its sequence
// number, at most inflight unacknowledged. Both sides buffer and flush when
// they have nothing more to do at once, as Ferry's stream layer does.
func rawLibp2p(t testing.TB, n, inflight int) rawResult {
	t.Helper()
	ha, hb := rawHost(t), rawHost(t)
	recvErr := make(chan error, 1)
	received := make(chan int, 1)
	hb.SetStreamHandler(rawProto, func(s network.Stream) {
		defer s.Close()
		br := bufio.NewReaderSize(s, 64<<10)
		bw := bufio.NewWriterSize(s, 64<<10)
		var buf []byte
		var ack [8]byte
		next := uint64(0)
		for {
			var err error
			buf, err = readFrame(br, buf)
			if err == io.EOF {
				received <- int(next)
				return
			}
			if err != nil {
				recvErr <- err
				return
			}
			seq := binary.BigEndian.Uint64(buf)
			if seq != next || len(buf) != payloadBytes {
				recvErr <- fmt.Errorf("got message %d (%d bytes), want %d", seq, len(buf), next)
				return
			}
			next++
			binary.BigEndian.PutUint64(ack[:], seq)
			if err := writeFrame(bw, ack[:]); err != nil {
				recvErr <- err
				return
			}
			if br.Buffered() == 0 {
				if err := bw.Flush(); err != nil {
					recvErr <- err
					return
				}
			}
		}
	})
	ha.Peerstore().AddAddrs(hb.ID(), hb.Addrs(), peerstore.PermanentAddrTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := ha.Connect(ctx, peer.AddrInfo{ID: hb.ID(), Addrs: hb.Addrs()}); err != nil {
		t.Fatal(err)
	}
	s, err := ha.NewStream(ctx, hb.ID(), rawProto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()

	sem := make(chan struct{}, inflight)
	acksDone := make(chan error, 1)
	var ackedAt time.Duration
	var acks int
	go func() {
		br := bufio.NewReaderSize(s, 64<<10)
		var buf []byte
		for acks < n {
			var err error
			if buf, err = readFrame(br, buf); err != nil {
				acksDone <- fmt.Errorf("read ack %d: %w", acks, err)
				return
			}
			if seq := binary.BigEndian.Uint64(buf); seq != uint64(acks) {
				acksDone <- fmt.Errorf("ack %d, want %d", seq, acks)
				return
			}
			acks++
			<-sem
		}
		ackedAt = now()
		acksDone <- nil
	}()

	runtime.GC()
	bw := bufio.NewWriterSize(s, 64<<10)
	msg := make([]byte, payloadBytes)
	for i := range msg {
		msg[i] = 'x'
	}
	start := now()
	for i := range n {
		select {
		case sem <- struct{}{}:
		default:
			if err := bw.Flush(); err != nil {
				t.Fatal(err)
			}
			sem <- struct{}{}
		}
		binary.BigEndian.PutUint64(msg, uint64(i))
		if err := writeFrame(bw, msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-acksDone:
		if err != nil {
			t.Fatal(err)
		}
	case err := <-recvErr:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("timed out waiting for acks")
	}
	r := rawResult{N: n, Elapsed: ackedAt - start}
	_ = s.CloseWrite()
	select {
	case got := <-received:
		r.Check = fmt.Sprintf("acks %d/%d in order; receiver %d", acks, n, got)
		r.Failed = got != n
	case err := <-recvErr:
		r.Check, r.Failed = err.Error(), true
	case <-time.After(10 * time.Second):
		r.Check, r.Failed = "receiver did not see the end of the stream", true
	}
	if r.Failed {
		t.Errorf("raw libp2p checks failed: %s", r.Check)
	}
	return r
}
