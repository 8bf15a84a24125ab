package testnet

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
)

func newPeerID(t *testing.T) peer.ID {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A pair's latency is drawn by the seed: the same either way round and in
// every run, within the bounds, and spread over them.
func TestWANLatencyPerPair(t *testing.T) {
	w := Internet(7)
	ids := make([]peer.ID, 12)
	for i := range ids {
		ids[i] = newPeerID(t)
	}
	seen := map[time.Duration]bool{}
	var low, high int
	for i, a := range ids {
		for _, b := range ids[i+1:] {
			l := w.Latency(a, b)
			if l != w.Latency(b, a) {
				t.Fatalf("latency of (a, b) %s, of (b, a) %s", l, w.Latency(b, a))
			}
			if l != Internet(7).Latency(a, b) {
				t.Fatal("the same seed drew another latency")
			}
			if l < w.MinLatency || l > w.MaxLatency {
				t.Fatalf("latency %s outside [%s, %s]", l, w.MinLatency, w.MaxLatency)
			}
			seen[l] = true
			if l < 80*time.Millisecond {
				low++
			}
			if l > 140*time.Millisecond {
				high++
			}
		}
	}
	// 66 pairs: a uniform draw puts about 22 in each third.
	if len(seen) < 60 || low < 8 || high < 8 {
		t.Fatalf("66 pairs drew %d latencies, %d under 80 ms, %d over 140 ms: not spread", len(seen), low, high)
	}
	other := 0
	for i, a := range ids {
		for _, b := range ids[i+1:] {
			if Internet(8).Latency(a, b) != w.Latency(a, b) {
				other++
			}
		}
	}
	if other < 60 {
		t.Fatalf("another seed drew another latency for only %d of 66 pairs", other)
	}
}

// wanPair is two mocknet hosts behind linkers over the link model w; b
// echoes nothing, it hands each stream it is given to got.
func wanPair(t *testing.T, w *WAN) (a, b *linker, l *wanLinks, got chan network.Stream) {
	t.Helper()
	mn := mocknet.New()
	l = newWANLinks(w)
	t.Cleanup(func() { _ = mn.Close(); l.close() })
	add := func(addr string) *linker {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		h, err := mn.AddPeer(k, ma.StringCast(addr))
		if err != nil {
			t.Fatal(err)
		}
		return &linker{Host: h, mn: mn, wan: l}
	}
	a, b = add("/ip4/10.0.0.1/tcp/4242"), add("/ip4/10.0.0.2/tcp/4242")
	got = make(chan network.Stream, 4)
	b.SetStreamHandler("/wan-test", func(s network.Stream) { got <- s })
	return a, b, l, got
}

// Writes arrive whole, in order, no sooner than the pair's latency, and
// the close follows the data; a dial pays the handshake once.
func TestWANStreamDeliversInOrderAfterTheLatency(t *testing.T) {
	w := &WAN{Seed: 1, MinLatency: 30 * time.Millisecond, MaxLatency: 60 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.2}
	a, b, l, got := wanPair(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, err := a.NewStream(ctx, b.ID(), "/wan-test")
	if err != nil {
		t.Fatal(err)
	}
	const k = 200
	for i := range k {
		if _, err := fmt.Fprintf(s, "%04d;", i); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("late")); !errors.Is(err, errWriteClosed) {
		t.Fatalf("a write after the close: %v, want errWriteClosed", err)
	}
	var r network.Stream
	select {
	case r = <-got:
	case <-ctx.Done():
		t.Fatal("no stream reached b")
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatal(err)
	}
	if lat, took := w.Latency(a.ID(), b.ID()), time.Since(start); took < lat {
		t.Fatalf("the first write arrived after %s, before the pair's latency %s", took, lat)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read to the close: %v", err)
	}
	all := string(first) + string(rest)
	want := ""
	for i := range k {
		want += fmt.Sprintf("%04d;", i)
	}
	if all != want {
		t.Fatalf("b read %d bytes out of order or short; want %d", len(all), len(want))
	}
	st := l.stats()
	if st.Writes != k || st.Dials != 1 {
		t.Fatalf("stats %+v: want %d writes, 1 dial (the stream rode the connection)", st, k)
	}
	// 20% of 200 writes: about 40 lost, each held what followed it.
	if st.Lost < 10 || st.Delayed < st.Lost {
		t.Fatalf("stats %+v: want about 40 lost, and writes held behind them", st)
	}
}

// A lost write arrives a retransmission timeout late, never not at all.
func TestWANLossIsARetransmission(t *testing.T) {
	w := &WAN{Seed: 2, MinLatency: 20 * time.Millisecond, MaxLatency: 20 * time.Millisecond, Loss: 1}
	a, b, l, got := wanPair(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := a.NewStream(ctx, b.ID(), "/wan-test")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := s.Write([]byte("once")); err != nil {
		t.Fatal(err)
	}
	r := <-got
	buf := make([]byte, 4)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "once" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if took, rto := time.Since(start), w.Latency(a.ID(), b.ID())+w.RTO(20*time.Millisecond); took < rto {
		t.Fatalf("a lost write arrived after %s, sooner than latency + RTO %s", took, rto)
	}
	if st := l.stats(); st.Lost != 1 {
		t.Fatalf("stats %+v: want the one write lost once", st)
	}
	_ = s.Close()
	_ = r.Close()
}

// A reset drops what is queued and fails later writes; the far end sees
// the reset, not the data.
func TestWANResetDropsTheQueue(t *testing.T) {
	w := &WAN{Seed: 3, MinLatency: 200 * time.Millisecond, MaxLatency: 200 * time.Millisecond}
	a, b, _, got := wanPair(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := a.NewStream(ctx, b.ID(), "/wan-test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("never")); err != nil {
		t.Fatal(err)
	}
	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, network.ErrReset) {
		t.Fatalf("a write after the reset: %v, want ErrReset", err)
	}
	select {
	case r := <-got:
		// The lazy protocol negotiation may have reached b: then it reads
		// the reset, never the data.
		if n, err := r.Read(make([]byte, 5)); n > 0 || err == nil {
			t.Fatalf("b read %d bytes, %v after the reset", n, err)
		}
	case <-time.After(time.Second):
		// Nothing reached b: the reset came before the negotiation.
	}
}
