package node_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wiretest"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/stream"
)

// createBody is a valid resource create of origin, at its version ver.
func createBody(t *testing.T, origin peer.ID, ver uint64, id string) []byte {
	t.Helper()
	payload, err := json.Marshal(map[string]any{"id": id, "creator_id": origin.String()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&pb.Body{Origin: []byte(origin), OriginVersion: ver, Kind: pb.Kind_KIND_RESOURCE_CREATE,
		DataType: "vm", Payload: payload, CreatedAtUnixNano: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seal(t *testing.T, key crypto.PrivKey, body []byte) *pb.Envelope {
	t.Helper()
	envs, err := protocols.Seal(key, [][]byte{body})
	if err != nil {
		t.Fatal(err)
	}
	return envs[0]
}

// gateLinkEpoch is the sender epoch of the hand-made batches: not A's
// store epoch, so they never pass for batches of A's own sender.
const gateLinkEpoch = 0x6a7e

// batchOf frames envelopes of A's resource lane, after version `after`.
func batchOf(after uint64, envs ...*pb.Envelope) []byte {
	return frameOf(wiretest.Batch(gateLinkEpoch, uint32(stream.LaneResource), after, envs...))
}

func frameOf(b []byte) []byte { return append(binary.AppendUvarint(nil, uint64(len(b))), b...) }

// exchange opens a create stream from `from` to `to`, writes raw (one or
// more frames, or a bare header) and reads the first answer after the
// receiver's position reports.
func exchange(t *testing.T, from host.Host, to peer.ID, raw []byte) (*pb.Reply, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := from.NewStream(ctx, to, protocols.ResourceCreate)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(raw); err != nil {
		_ = s.Reset()
		return nil, err
	}
	fr := protocols.NewFrameReader(s, protocols.MaxReplyBytes)
	for {
		r := &pb.Reply{}
		if err := fr.Read(r); err != nil {
			_ = s.Reset()
			return nil, err
		}
		if !r.Report {
			_ = s.Close()
			return r, nil
		}
	}
}

// wantReset checks that a stream was reset by the receiver: an error, no
// answer, and not because our own deadline ran out.
func wantReset(t *testing.T, what string, r *pb.Reply, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got answer %v, want the stream reset", what, r)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: no answer before the deadline (%v), want a reset", what, err)
	}
	if !errors.Is(err, network.ErrReset) {
		t.Fatalf("%s: stream ended with %v, want a reset", what, err)
	}
}

func wantApplied(t *testing.T, what string, r *pb.Reply, err error, through uint64) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if r.Through != through || len(r.Refused) != 0 || r.Epoch != gateLinkEpoch {
		t.Fatalf("%s: answer %v, want applied through %d", what, r, through)
	}
}

// received is B's count of inbound deliveries with an outcome
// (ferry_delivery_received_total).
func received(t *testing.T, nd *node.Node, outcome string) int {
	t.Helper()
	mfs, err := nd.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ferry_delivery_received_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}

func changes(t *testing.T, nd *node.Node) int {
	t.Helper()
	cs, err := nd.Store().Changes(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	return len(cs)
}

// TestGateRefusesNonPartnersAndForgeries: a non-partner's frame on a
// partner-only protocol is refused, and so is a forged signature; a genuine
// frame of a partner is applied, and an oversized frame resets only its stream.
func TestGateRefusesNonPartnersAndForgeries(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2}) // members, not partners
	net.WaitMembers(20 * time.Second)
	nA, nB := net.Node(0), net.Node(1)
	A, B := net.IDs[0], net.IDs[1]
	if nA.Config().Limits.MaxMessageBytes != protocols.DefaultMaxMessageBytes {
		t.Fatalf("limit %d", nA.Config().Limits.MaxMessageBytes)
	}
	keyA, err := node.Home{Dir: net.Homes[0].Dir}.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := peer.IDFromPrivateKey(keyA); id != A {
		t.Fatalf("home 0 key is %s, not A %s", id, A)
	}
	if nA.Store().Epoch() == gateLinkEpoch {
		t.Fatalf("A's store epoch is the test's link epoch %d", gateLinkEpoch)
	}
	natsB := net.NATS(1)
	events, err := natsB.SubscribeSync("ferry.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := natsB.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := changes(t, nB); n != 0 {
		t.Fatalf("B starts with %d changes", n)
	}

	// 0. A stranger (a bare libp2p host with its own key) sends its own
	// genuinely signed create: refused.
	strangerKey, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := libp2p.New(libp2p.Identity(strangerKey), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Close() })
	ctx := context.Background()
	if err := stranger.Connect(ctx, peer.AddrInfo{ID: B, Addrs: nB.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	ack, err := exchange(t, stranger, B, batchOf(0, seal(t, strangerKey, createBody(t, stranger.ID(), 1, "stranger"))))
	wantReset(t, "stranger's frame", ack, err)

	// 1. A is a member, not a partner: its genuine, signed create is refused.
	ack, err = exchange(t, nA.Host(), B, batchOf(0, seal(t, keyA, createBody(t, A, 1, "x"))))
	wantReset(t, "non-partner frame", ack, err)
	if n := changes(t, nB); n != 0 {
		t.Fatalf("B stored %d changes of a non-partner", n)
	}

	// Partners on both sides from here on.
	if err := nA.SetPartner(ctx, B, true); err != nil {
		t.Fatal(err)
	}
	if err := nB.SetPartner(ctx, A, true); err != nil {
		t.Fatal(err)
	}

	// 2. Forged: a body claiming origin A sealed with another key.
	other, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ack, err = exchange(t, nA.Host(), B, batchOf(0, seal(t, other, createBody(t, A, 1, "forged"))))
	wantReset(t, "forged signature", ack, err)

	// 3. Tampered: A's genuine envelope with its body changed after sealing.
	env := seal(t, keyA, createBody(t, A, 1, "x"))
	env.Body = createBody(t, A, 1, "tampered")
	ack, err = exchange(t, nA.Host(), B, batchOf(0, env))
	wantReset(t, "tampered body", ack, err)

	// 4. Relayed: a genuine envelope of another origin, sent by partner A.
	otherID, _ := peer.IDFromPrivateKey(other)
	ack, err = exchange(t, nA.Host(), B, batchOf(0, seal(t, other, createBody(t, otherID, 1, "relayed"))))
	wantReset(t, "envelope of another origin", ack, err)
	if n := changes(t, nB); n != 0 {
		t.Fatalf("B stored %d changes of refused frames", n)
	}
	// The stranger's stream was reset when it opened, before its frame
	// was read: only 1-4 were read and refused.
	if n := received(t, nB, "refused"); n != 4 {
		t.Fatalf("B counted %d refused deliveries, want 4", n)
	}

	// 5. Positive control: the same genuine frame as in 1, now from a partner.
	good := seal(t, keyA, createBody(t, A, 1, "good"))
	ack, err = exchange(t, nA.Host(), B, batchOf(0, good))
	wantApplied(t, "genuine frame of a partner", ack, err, 1)
	if n := changes(t, nB); n != 1 {
		t.Fatalf("B holds %d changes after one applied create", n)
	}
	// B's first event is the good create: nothing was published for 1-4.
	wantEvent(t, events, A, "good")

	// 6. Oversized: a frame header declaring more than max_message_bytes +
	// FrameOverhead resets the stream before anything is read or stored.
	limit := nB.Config().Limits.MaxMessageBytes + protocols.FrameOverhead
	raw := binary.AppendUvarint(nil, uint64(limit+1))
	raw = append(raw, make([]byte, 1024)...)
	ack, err = exchange(t, nA.Host(), B, raw)
	wantReset(t, "oversized frame", ack, err)
	// So does a real message a bit over the limit.
	big := make([]byte, nB.Config().Limits.MaxMessageBytes+protocols.FrameOverhead)
	for i := range big {
		big[i] = 'a'
	}
	hugeBody, err := proto.Marshal(&pb.Body{Origin: []byte(A), OriginVersion: 2, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm",
		Payload: []byte(`{"id":"huge","creator_id":"` + A.String() + `","pad":"` + string(big) + `"}`)})
	if err != nil {
		t.Fatal(err)
	}
	ack, err = exchange(t, nA.Host(), B, batchOf(1, seal(t, keyA, hugeBody)))
	wantReset(t, "message over the limit", ack, err)
	if n := received(t, nB, "malformed"); n != 2 {
		t.Fatalf("B counted %d malformed deliveries, want 2", n)
	}

	// B keeps working: the next genuine frame is applied and published.
	ack, err = exchange(t, nA.Host(), B, batchOf(1, seal(t, keyA, createBody(t, A, 2, "after"))))
	wantApplied(t, "genuine frame after the oversized ones", ack, err, 2)
	wantEvent(t, events, A, "after")
	if n := changes(t, nB); n != 2 {
		t.Fatalf("B holds %d changes, want 2", n)
	}
	// And a replay of an applied frame is a duplicate, not a second change:
	// it is answered with the lane's position.
	ack, err = exchange(t, nA.Host(), B, batchOf(0, good))
	if err != nil || ack.Through != 2 || len(ack.Refused) != 0 {
		t.Fatalf("replay: %v %v, want an answer through 2", ack, err)
	}
	if n := changes(t, nB); n != 2 {
		t.Fatalf("B holds %d changes after a replay, want 2", n)
	}
	if n := received(t, nB, "applied"); n != 2 {
		t.Fatalf("B counted %d applied deliveries, want 2", n)
	}
	// The same version with other content is an equivocation: refused, and
	// loudly, never taken for a duplicate.
	ack, err = exchange(t, nA.Host(), B, batchOf(1, seal(t, keyA, createBody(t, A, 2, "other"))))
	if err != nil || ack.Through != 2 || len(ack.Refused) != 1 || !ack.Refused[0].Equivocation || ack.Refused[0].Version != 2 {
		t.Fatalf("equivocation: %v %v, want a refusal of version 2", ack, err)
	}
	if n := received(t, nB, "equivocation"); n != 1 {
		t.Fatalf("B counted %d equivocations, want 1", n)
	}
	// A batch is applied as a whole: a change refused inside it (a data
	// type that is not a subject token) is named by its version, and the
	// others are applied.
	bad, err := proto.Marshal(&pb.Body{Origin: []byte(A), OriginVersion: 4, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "a.b",
		Payload: []byte(`{"id":"bad","creator_id":"` + A.String() + `"}`)})
	if err != nil {
		t.Fatal(err)
	}
	envs, err := protocols.Seal(keyA, [][]byte{createBody(t, A, 3, "three"), bad, createBody(t, A, 5, "five")})
	if err != nil {
		t.Fatal(err)
	}
	ack, err = exchange(t, nA.Host(), B, batchOf(2, envs...))
	if err != nil || ack.Through != 5 || len(ack.Refused) != 1 || ack.Refused[0].Version != 4 || ack.Refused[0].Equivocation {
		t.Fatalf("batch with a refused change: %v %v", ack, err)
	}
	wantEvent(t, events, A, "three")
	wantEvent(t, events, A, "five")
	if n := changes(t, nB); n != 4 {
		t.Fatalf("B holds %d changes, want 4", n)
	}
	// Out of order inside a batch: refused as a whole, nothing written.
	envs, err = protocols.Seal(keyA, [][]byte{createBody(t, A, 7, "seven"), createBody(t, A, 6, "six")})
	if err != nil {
		t.Fatal(err)
	}
	ack, err = exchange(t, nA.Host(), B, batchOf(5, envs...))
	wantReset(t, "versions out of order", ack, err)
	if n := changes(t, nB); n != 4 {
		t.Fatalf("B holds %d changes after a refused batch, want 4", n)
	}
}

func wantEvent(t *testing.T, sub *nats.Subscription, origin peer.ID, id string) {
	t.Helper()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no event for %q: %v", id, err)
	}
	var ev struct {
		Origin   string         `json:"origin"`
		Resource map[string]any `json:"resource"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if m.Subject != "ferry.resource.created.vm" || ev.Origin != origin.String() || ev.Resource["id"] != id {
		t.Fatalf("event %s %s, want the create of %q", m.Subject, m.Data, id)
	}
}

// TestStrangerStreamsResetAtOpen: a stranger (a bare libp2p host with its
// own key, never a partner nor a member) opens a stream of every protocol
// the node announces (its identify list; libp2p's own identify and ping
// aside, which answer anyone), claims a 1,050,000-byte frame and sends 1
// KiB of it: every stream is reset by the node, none waits for the rest of
// the frame.
func TestStrangerStreamsResetAtOpen(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	nd := net.Node(0)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := libp2p.New(libp2p.Identity(key), libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stranger.Connect(ctx, peer.AddrInfo{ID: nd.ID(), Addrs: nd.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	var protos []protocol.ID
	testnet.WaitFor(t, 10*time.Second, "identify lists the node's protocols", func() bool {
		protos, _ = stranger.Peerstore().GetProtocols(nd.ID())
		return slices.Contains(protos, protocols.Hello)
	})
	claim := append(binary.AppendUvarint(nil, 1_050_000), make([]byte, 1024)...)
	type result struct {
		p   protocol.ID
		err error
	}
	results := make(chan result, len(protos))
	n := 0
	for _, p := range protos {
		if strings.HasPrefix(string(p), "/ipfs/") {
			continue // identify, identify push, ping: libp2p's own
		}
		n++
		go func() {
			s, err := stranger.NewStream(ctx, nd.ID(), p)
			if err != nil {
				results <- result{p, err}
				return
			}
			defer s.Reset()
			_ = s.SetDeadline(time.Now().Add(15 * time.Second))
			_, _ = s.Write(claim)
			_, err = io.ReadAll(s)
			results <- result{p, err}
		}()
	}
	for range n {
		r := <-results
		if !errors.Is(r.err, network.ErrReset) {
			t.Errorf("%s: the stranger's stream ended with %v, want it reset", r.p, r.err)
		}
	}
	if c := changes(t, nd); c != 0 {
		t.Fatalf("the node holds %d changes", c)
	}
}
