package membership

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrynet/ferry/internal/wait"
)

// started is a membership service on a real host on 127.0.0.1 with its own
// gossipsub router.
type started struct {
	h   host.Host
	svc *Service
	reg *prometheus.Registry
}

func start(t *testing.T, name string, opts ...func(*Deps)) started {
	t.Helper()
	k, _ := key(t)
	h, err := libp2p.New(libp2p.Identity(k), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ps, err := pubsub.NewGossipSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	d := Deps{Host: h, PubSub: ps, Key: k, Network: "net", Name: name, Registerer: reg}
	for _, o := range opts {
		o(&d)
	}
	svc, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return started{h: h, svc: svc, reg: reg}
}

// connected starts A and B and connects A to B.
func connected(t *testing.T, opts ...func(*Deps)) (a, b started) {
	t.Helper()
	a, b = start(t, "A", opts...), start(t, "B", opts...)
	if err := a.h.Connect(context.Background(), peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// signed is a record of a new peer of the network "net".
func signed(t *testing.T, name string, seq uint64) Record {
	t.Helper()
	k, _ := key(t)
	r, err := Sign(k, Record{Network: "net", Name: name, Seq: seq, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func servedPulls(t *testing.T, s started, answer string) float64 {
	t.Helper()
	return testutil.ToFloat64(s.svc.pulls.WithLabelValues(answer))
}

// TestPullSendsNothingWhenTheSetsAgree: a pull carries the asker's digest;
// an answerer holding the same records sends none, and the digests of two
// nodes agree exactly when their records do.
func TestPullSendsNothingWhenTheSetsAgree(t *testing.T) {
	a, b := connected(t)
	// The first pull: A holds only its own record, B only its own; B takes
	// A's from the request and sends both.
	before := servedPulls(t, b, "records")
	if _, err := a.svc.Pull(context.Background(), b.h.ID()); err != nil {
		t.Fatal(err)
	}
	if a.svc.Known() != 2 || b.svc.Known() != 2 {
		t.Fatalf("after one pull: A knows %d, B %d records; want 2 each", a.svc.Known(), b.svc.Known())
	}
	if got := servedPulls(t, b, "records") - before; got < 1 {
		t.Fatalf("B answered %v pulls with records; want the first one", got)
	}
	if string(a.svc.Digest()) != string(b.svc.Digest()) {
		t.Fatal("A and B hold the same records and their digests differ")
	}
	// Again: the digests agree, B sends nothing.
	same := servedPulls(t, b, "same")
	n, err := a.svc.Pull(context.Background(), b.h.ID())
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 || servedPulls(t, b, "same") != same+1 {
		t.Fatalf("second pull took %d records, B's same answers %v -> %v; want 0 records and one more same answer", n, same, servedPulls(t, b, "same"))
	}
	// A newer record of a third peer at B: the digests differ, and the
	// next pull brings it.
	if _, err := b.svc.Take(signed(t, "C", 7).Raw); err != nil {
		t.Fatal(err)
	}
	if string(a.svc.Digest()) == string(b.svc.Digest()) {
		t.Fatal("B holds a record A does not and their digests agree")
	}
	if n, err := a.svc.Pull(context.Background(), b.h.ID()); err != nil || n != 1 {
		t.Fatalf("pull after B learned C: took %d, %v; want 1", n, err)
	}
	if string(a.svc.Digest()) != string(b.svc.Digest()) {
		t.Fatal("digests differ after the pull that brought C")
	}
}

// TestPullPushesBack: a pull is push-pull: the asker sends back the
// records it holds that the answer lacked or held older, so one exchange
// leaves both ends with the same set.
func TestPullPushesBack(t *testing.T) {
	a, b := connected(t)
	// A holds C and D, B holds E: after A pulls from B, each holds all
	// five records (A, B, C, D, E).
	for _, r := range []Record{signed(t, "C", 1), signed(t, "D", 1)} {
		if _, err := a.svc.Take(r.Raw); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.svc.Take(signed(t, "E", 1).Raw); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Pull(context.Background(), b.h.ID()); err != nil {
		t.Fatal(err)
	}
	// B takes the pushed pages on its handler's goroutine, which may still
	// run when Pull returns.
	wait.For(t, 10*time.Second, "B holds five records", func() bool { return b.svc.Known() >= 5 })
	if a.svc.Known() != 5 || b.svc.Known() != 5 {
		t.Fatalf("after one pull A holds %d records and B %d; want 5 each", a.svc.Known(), b.svc.Known())
	}
	if string(a.svc.Digest()) != string(b.svc.Digest()) {
		t.Fatal("after a push-pull the digests differ")
	}
}

// TestNewRecordIsGossiped: a node publishes its record once the members
// topic has a peer; a publish before that (no one subscribed yet) does not
// count as done.
func TestNewRecordIsGossiped(t *testing.T) {
	_, b := connected(t)
	gossiped := func() float64 {
		var sum float64
		for _, o := range []string{"taken", "stale", "refused"} {
			sum += testutil.ToFloat64(b.svc.records.WithLabelValues("gossip", o))
		}
		return sum
	}
	// If this times out, A published its record before the topic had a
	// peer and never again.
	wait.For(t, 15*time.Second, "B receives a record on the members topic", func() bool { return gossiped() > 0 })
}
