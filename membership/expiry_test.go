package membership

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	gpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/wait"
)

// TestExpiredRecordsRefused: a record past its expiry is refused (and
// ignored, not penalised, on gossip); a record of an earlier release, which
// names no expiry, lasts from its signing (seq) for the holder's lifetime.
func TestExpiredRecordsRefused(t *testing.T) {
	self, _ := key(t)
	svc, err := New(Deps{Key: self, Network: "net", Name: "S", Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	k, _ := key(t)
	now := time.Now()
	past, _ := Sign(k, Record{Network: "net", Name: "A", Seq: uint64(now.Add(-2 * time.Hour).UnixNano()), Expires: now.Add(-time.Minute)})
	if _, err := svc.Take(past.Raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("an expired record: %v, want ErrExpired", err)
	}
	msg := &pubsub.Message{Message: &gpb.Message{Data: past.Raw}}
	if got := svc.validate(context.Background(), "", msg); got != pubsub.ValidationIgnore {
		t.Fatalf("an expired record on gossip: %v, want ignore", got)
	}
	// Earlier releases: no expiry in the record.
	old, _ := Sign(k, Record{Network: "net", Name: "A", Seq: uint64(now.Add(-61 * time.Minute).UnixNano())})
	if _, err := svc.Take(old.Raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("a record without expiry signed 61 minutes ago, lifetime 1h: %v, want ErrExpired", err)
	}
	signed := now.Add(-30 * time.Minute)
	recent, _ := Sign(k, Record{Network: "net", Name: "A", Seq: uint64(signed.UnixNano())})
	r, err := svc.Take(recent.Raw)
	if err != nil {
		t.Fatalf("a record without expiry signed 30 minutes ago: %v", err)
	}
	if want := signed.Add(time.Hour); !r.Expires.Equal(want) {
		t.Fatalf("taken with expiry %v, want its signing time plus the lifetime %v", r.Expires, want)
	}
	if _, err := New(Deps{Key: self, Network: "net", Lifetime: time.Second}); err == nil {
		t.Fatal("a lifetime of 1s was taken; want an error below MinLifetime")
	}
}

// TestRecordExpiresAndComesBack: a record held is dropped at its expiry
// (OnExpire, the count of records, the digest), copies of it are refused
// from then on, and a newer record of the peer makes it known again.
func TestRecordExpiresAndComesBack(t *testing.T) {
	var mu sync.Mutex
	var gone []Record
	a := start(t, "A", func(d *Deps) {
		d.OnExpire = func(r Record) { mu.Lock(); gone = append(gone, r); mu.Unlock() }
	})
	k, id := key(t)
	short, _ := Sign(k, Record{Network: "net", Name: "C", Seq: 1, Expires: time.Now().Add(700 * time.Millisecond)})
	if _, err := a.svc.Take(short.Raw); err != nil {
		t.Fatal(err)
	}
	with := string(a.svc.Digest())
	if a.svc.Known() != 2 {
		t.Fatalf("known %d, want 2", a.svc.Known())
	}
	wait.For(t, 10*time.Second, "C's record expires at A", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(gone) == 1
	})
	if gone[0].Peer != id || a.svc.Known() != 1 || string(a.svc.Digest()) == with {
		t.Fatalf("expired %v; known %d; want C gone and the digest changed", gone[0].Peer, a.svc.Known())
	}
	if _, err := a.svc.Take(short.Raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("the expired record again: %v, want ErrExpired", err)
	}
	back, _ := Sign(k, Record{Network: "net", Name: "C", Seq: 2, Expires: time.Now().Add(time.Hour)})
	if _, err := a.svc.Take(back.Raw); err != nil {
		t.Fatalf("C's new record: %v", err)
	}
	if a.svc.Known() != 2 {
		t.Fatalf("known %d after C's new record, want 2", a.svc.Known())
	}
}

// TestRecordRenewedBeforeItExpires: with a lifetime of 3 s a node signs a
// new record every second, and its neighbour, which drops records at their
// expiry, holds it without a gap for more than two lifetimes.
func TestRecordRenewedBeforeItExpires(t *testing.T) {
	var mu sync.Mutex
	expired := map[peer.ID]int{}
	a, b := connected(t, func(d *Deps) {
		d.Lifetime = MinLifetime
		d.OnExpire = func(r Record) { mu.Lock(); expired[r.Peer]++; mu.Unlock() }
	})
	first, err := Open(a.svc.Own(), "net")
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Expires.Sub(time.Unix(0, int64(first.Seq))); got != MinLifetime {
		t.Fatalf("A's record lasts %v from its signing, want %v", got, MinLifetime)
	}
	wait.For(t, 15*time.Second, "B holds A's record", func() bool { return holds(b, a.h.ID()) })
	// Seven records: more than two lifetimes; B is asked at every poll.
	seqs := map[uint64]bool{}
	lost := ""
	wait.For(t, 30*time.Second, "A signs seven records", func() bool {
		r, err := Open(a.svc.Own(), "net")
		if err != nil {
			t.Fatal(err)
		}
		seqs[r.Seq] = true
		if !holds(b, a.h.ID()) && lost == "" {
			lost = fmt.Sprintf("B lost A's record %v after A's first (A signed %d records so far)", time.Since(time.Unix(0, int64(first.Seq))), len(seqs))
		}
		return len(seqs) >= 7
	})
	mu.Lock()
	defer mu.Unlock()
	if lost != "" || expired[a.h.ID()] != 0 {
		t.Fatalf("%s; A's record expired at B %d times", lost, expired[a.h.ID()])
	}
}

// holds reports whether s holds a record of p.
func holds(s started, p peer.ID) bool {
	for _, r := range s.svc.Records() {
		if r.Peer == p {
			return true
		}
	}
	return false
}
