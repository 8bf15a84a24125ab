package membership

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	gpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

func key(t *testing.T) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

func TestRecordSignOpen(t *testing.T) {
	k, id := key(t)
	a := ma.StringCast("/ip4/127.0.0.1/tcp/9")
	exp := time.Unix(1_900_000_000, 5)
	r, err := Sign(k, Record{Network: "net", Name: "A", Addrs: []ma.Multiaddr{a}, Seq: 7, Version: "v", Expires: exp})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(r.Raw, "net")
	if err != nil {
		t.Fatal(err)
	}
	if got.Peer != id || got.Name != "A" || got.Seq != 7 || len(got.Addrs) != 1 || !got.Addrs[0].Equal(a) || got.Version != "v" ||
		!got.Expires.Equal(exp) {
		t.Fatalf("opened %+v", got)
	}
	if _, err := Open(r.Raw, "other"); !errors.Is(err, ErrNetwork) {
		t.Fatalf("other network: %v", err)
	}
}

func TestRecordRSAKeyTravels(t *testing.T) {
	k, _, err := crypto.GenerateRSAKeyPair(2048, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Sign(k, Record{Network: "net", Name: "R", Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(r.Raw, "net"); err != nil {
		t.Fatal(err)
	}
}

// resign rewraps a record body with a signature by key.
func resign(t *testing.T, k crypto.PrivKey, m *pb.MemberRecord) []byte {
	t.Helper()
	body, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := k.Sign(append([]byte(signPrefix), body...))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := proto.Marshal(&pb.SignedMemberRecord{Record: body, Signature: sig})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestRecordRefusals(t *testing.T) {
	k, id := key(t)
	other, otherID := key(t)
	// Signed by another key than the peer's it names.
	forged := resign(t, other, &pb.MemberRecord{Peer: []byte(id), Network: "net", Name: "A", Seq: 1})
	if _, err := Open(forged, "net"); !errors.Is(err, ErrSignature) {
		t.Fatalf("signer != peer: %v", err)
	}
	// Tampered after signing.
	good := resign(t, k, &pb.MemberRecord{Peer: []byte(id), Network: "net", Name: "A", Seq: 1})
	s := &pb.SignedMemberRecord{}
	if err := proto.Unmarshal(good, s); err != nil {
		t.Fatal(err)
	}
	s.Record = append(s.Record, 0x10, 0x02) // seq = 2 appended
	bad, _ := proto.Marshal(s)
	if _, err := Open(bad, "net"); !errors.Is(err, ErrSignature) {
		t.Fatalf("tampered: %v", err)
	}
	// Too big as it travels, and too many addresses.
	if _, err := Open(make([]byte, MaxRecordBytes+1), "net"); !errors.Is(err, ErrTooBig) {
		t.Fatalf("too big: %v", err)
	}
	long := resign(t, k, &pb.MemberRecord{Peer: []byte(id), Network: "net", Name: strings.Repeat("n", MaxNameBytes+1), Seq: 1})
	if _, err := Open(long, "net"); !errors.Is(err, ErrTooBig) {
		t.Fatalf("long name: %v", err)
	}
	if _, err := Sign(k, Record{Network: "net", Name: strings.Repeat("n", MaxRecordBytes)}); !errors.Is(err, ErrTooBig) {
		t.Fatalf("sign too big: %v", err)
	}
	// Garbage.
	if _, err := Open([]byte{0xff, 0xff}, "net"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}

	// The service: not allowed, stale, newer.
	self, _ := key(t)
	svc, err := New(Deps{Key: self, Network: "net", Name: "S", Allowed: func(p peer.ID) bool { return p != otherID }})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	var seen []Record
	svc.d.OnRecord = func(r Record) { seen = append(seen, r) }
	later := time.Now().Add(time.Hour)
	r5, _ := Sign(k, Record{Network: "net", Name: "A", Seq: 5, Expires: later})
	r4, _ := Sign(k, Record{Network: "net", Name: "A", Seq: 4, Expires: later})
	r6, _ := Sign(k, Record{Network: "net", Name: "A2", Seq: 6, Expires: later})
	if _, err := svc.Take(r5.Raw); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Take(r5.Raw); !errors.Is(err, ErrStale) {
		t.Fatalf("same record again: %v", err)
	}
	if _, err := svc.Take(r4.Raw); !errors.Is(err, ErrStale) {
		t.Fatalf("older record: %v", err)
	}
	if _, err := svc.Take(r6.Raw); err != nil {
		t.Fatal(err)
	}
	ro, _ := Sign(other, Record{Network: "net", Name: "O", Seq: 1, Expires: later})
	if _, err := svc.Take(ro.Raw); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("not in members: %v", err)
	}
	if len(seen) != 2 || seen[1].Name != "A2" || svc.Known() != 2 {
		t.Fatalf("taken %d records, known %d", len(seen), svc.Known())
	}
}

// The gossip validator passes a node's own record and a record held
// already (so a republish floods once), ignores older ones, and rejects
// forged ones.
func TestValidatorOnRepublish(t *testing.T) {
	self, _ := key(t)
	svc, err := New(Deps{Key: self, Network: "net", Name: "S"})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	msg := func(raw []byte) *pubsub.Message { return &pubsub.Message{Message: &gpb.Message{Data: raw}} }
	if got := svc.validate(context.Background(), "", msg(svc.Own())); got != pubsub.ValidationAccept {
		t.Fatalf("own record: %v", got)
	}
	k, id := key(t)
	r2, _ := Sign(k, Record{Network: "net", Name: "A", Seq: 2, Expires: time.Now().Add(time.Hour)})
	r1, _ := Sign(k, Record{Network: "net", Name: "A", Seq: 1, Expires: time.Now().Add(time.Hour)})
	if got := svc.validate(context.Background(), "", msg(r2.Raw)); got != pubsub.ValidationAccept {
		t.Fatalf("new record: %v", got)
	}
	if _, err := svc.Take(r2.Raw); err != nil {
		t.Fatal(err)
	}
	if got := svc.validate(context.Background(), "", msg(r2.Raw)); got != pubsub.ValidationAccept {
		t.Fatalf("the record held, again: %v", got)
	}
	if got := svc.validate(context.Background(), "", msg(r1.Raw)); got != pubsub.ValidationIgnore {
		t.Fatalf("older record: %v", got)
	}
	other, _ := key(t)
	forged := resign(t, other, &pb.MemberRecord{Peer: []byte(id), Network: "net", Name: "A", Seq: 3})
	if got := svc.validate(context.Background(), "", msg(forged)); got != pubsub.ValidationReject {
		t.Fatalf("forged record: %v", got)
	}
}
