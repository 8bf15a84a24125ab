package catchup

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// The serving side (serve.go), spoken to by hand: what each request is
// answered with, how answers are cut into batches, and the refusals of
// docs/protocols.md, word for word.

// served lists the origin versions (or decision sequences) of the
// envelopes in batches, and checks that only the last batch is done.
func served(t *testing.T, batches []*pb.SyncBatch) []uint64 {
	t.Helper()
	var out []uint64
	for i, b := range batches {
		if b.Error != "" {
			t.Fatalf("batch %d refused: %s", i, b.Error)
		}
		if b.Done != (i == len(batches)-1) {
			t.Fatalf("batch %d of %d: done %v", i, len(batches), b.Done)
		}
		out = append(out, versions(t, b.Envelopes)...)
	}
	return out
}

func TestServeRefusals(t *testing.T) {
	net := newNetwork(t)
	s := net.node() // the server, not the reviewer
	v := net.node() // the reviewer, a server too
	partner, member, stranger := net.node(), net.node(), net.node()
	o, notPartner, empty := newOrigin(t), newOrigin(t), newOrigin(t)
	members := []peer.ID{s.id, v.id, partner.id, member.id, o.id}
	s.roles.set([]peer.ID{partner.id, o.id, empty.id}, members, v.id)
	v.roles.set(nil, members, v.id)
	oChanges := o.resources(3, 64)
	s.hold(oChanges...)
	s.hold(notPartner.resources(2, 64)...)
	s.hold(v.as().decisions(1, 2)...)
	latest := versions(t, oChanges)[2]
	for _, x := range []*node{partner, member, stranger} {
		net.connect(x, s)
		net.connect(x, v)
	}
	s.start()
	v.start()

	resources := func(o peer.ID, after uint64) *pb.SyncRequest {
		return &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(o), After: after}
	}
	for _, c := range []struct {
		name   string
		asker  *node
		server *node
		req    *pb.SyncRequest
		reason string
	}{
		{"resources to a member that is not a partner", member, s, resources(o.id, 0),
			fmt.Sprintf("resources of %s are shared with partners only", o.id)},
		{"resources of an origin that is not a partner", partner, s, resources(notPartner.id, 0),
			fmt.Sprintf("resources of %s are shared with partners only", notPartner.id)},
		{"origin not a peer id", partner, s, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte("junk")},
			"origin is not a peer id"},
		{"unknown origin", partner, s, resources(empty.id, 0), fmt.Sprintf("unknown origin %s", empty.id)},
		{"resources in the future", partner, s, resources(o.id, latest+1),
			fmt.Sprintf("position %d is in the future (this node holds up to %d)", latest+1, latest)},
		{"decisions in the future", member, s, &pb.SyncRequest{What: pb.SyncRequest_WHAT_DECISIONS, After: 5},
			"position 5 is in the future (this node holds up to 2)"},
		{"snapshot from a node that is not the reviewer", member, s, &pb.SyncRequest{What: pb.SyncRequest_WHAT_SNAPSHOT},
			"only the reviewer serves snapshots"},
		{"unknown request", partner, s, &pb.SyncRequest{}, "unknown request WHAT_UNSPECIFIED"},
	} {
		t.Run(c.name, func(t *testing.T) {
			batches, err := request(t, c.asker.host, c.server.id, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(batches) != 1 || batches[0].Error != c.reason || !batches[0].Done || len(batches[0].Envelopes) != 0 {
				t.Fatalf("answer %v, want one done batch refusing with %q", batches, c.reason)
			}
			if len(c.server.logs.find("sync request refused", "reason", c.reason)) == 0 {
				t.Fatalf("the server did not log the refusal %q", c.reason)
			}
		})
	}

	// A stranger (neither partner nor member) is not answered at all: its
	// stream is reset when it opens, before its request is read.
	for _, c := range []struct {
		name   string
		server *node
		req    *pb.SyncRequest
	}{
		{"resources to a stranger", s, resources(o.id, 0)},
		{"decisions to a stranger", s, &pb.SyncRequest{What: pb.SyncRequest_WHAT_DECISIONS}},
		{"own changes to a stranger", s, &pb.SyncRequest{What: pb.SyncRequest_WHAT_OWN}},
		{"snapshot to a stranger", v, &pb.SyncRequest{What: pb.SyncRequest_WHAT_SNAPSHOT}},
	} {
		t.Run(c.name, func(t *testing.T) {
			batches, err := request(t, stranger.host, c.server.id, c.req)
			if err == nil || !strings.Contains(err.Error(), "stream reset") {
				t.Fatalf("answer %v, err %v; want the stream reset", batches, err)
			}
		})
	}

	// Not refusals: a partner may ask for the server's own chain even when
	// it is empty, and a member that holds more of its own changes than the
	// server gets an empty answer.
	for _, c := range []struct {
		name  string
		asker *node
		req   *pb.SyncRequest
	}{
		{"the server's own empty chain", partner, resources(s.id, 0)},
		{"own changes beyond what the server holds", member, &pb.SyncRequest{What: pb.SyncRequest_WHAT_OWN, After: 12345}},
	} {
		t.Run(c.name, func(t *testing.T) {
			batches, err := request(t, c.asker.host, s.id, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if got := served(t, batches); len(got) != 0 {
				t.Fatalf("served %v, want an empty answer", got)
			}
		})
	}
}

// A request that cannot be read resets the stream: no answer.
func TestServeResetsAnUnreadableRequest(t *testing.T) {
	net := newNetwork(t)
	s, p := net.node(), net.node()
	s.roles.set([]peer.ID{p.id}, []peer.ID{p.id}, "")
	net.connect(p, s)
	s.start()
	for name, frame := range map[string][]byte{
		"not a SyncRequest": {0xff, 0xff, 0xff},
		"too long":          make([]byte, maxRequestBytes+1),
	} {
		t.Run(name, func(t *testing.T) {
			batches, err := requestRaw(t, p.host, s.id, frame)
			if err == nil || len(batches) != 0 {
				t.Fatalf("answered %v, %v; want a reset stream", batches, err)
			}
			wait.For(t, waitTimeout, "the server logged the reset", func() bool {
				return len(s.logs.find("stream reset", "err", "read sync request")) > 0
			})
		})
	}
}

// An origin's chain is served after the asked position, only its resource
// changes, in order, cut into batches of BatchSize changes or
// MaxBatchBytes, and at most limit in all.
func TestServeCutsTheChainIntoBatches(t *testing.T) {
	net := newNetwork(t)
	s, p := net.node(), net.node()
	o, o2 := newOrigin(t), newOrigin(t)
	s.roles.set([]peer.ID{p.id, o.id, o2.id}, nil, "")
	full := o2.resources(BatchSize, 40)
	s.hold(full...)
	small := o.resources(600, 40)
	// Changes of other kinds between them are not served.
	others := []*pb.Envelope{o.other(pb.Kind_KIND_CONSIDERS, ""), o.other(pb.Kind_KIND_PLANNER, p.id)}
	small = append(small, o.resources(500, 40)...)
	big := o.resources(6, 900<<10)
	s.hold(small...)
	s.hold(others...)
	s.hold(big...)
	vs := versions(t, append(slices.Clone(small), big...))
	net.connect(p, s)
	s.start()

	ask := func(after uint64, limit uint32) []*pb.SyncBatch {
		t.Helper()
		batches, err := request(t, p.host, s.id, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(o.id),
			After: after, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		return batches
	}
	sizes := func(batches []*pb.SyncBatch) (counts []int) {
		for _, b := range batches {
			n := 0
			for _, e := range b.Envelopes {
				n += proto.Size(e)
			}
			if len(b.Envelopes) > 1 && n > MaxBatchBytes {
				t.Fatalf("a batch of %d envelopes holds %d bytes, more than %d", len(b.Envelopes), n, MaxBatchBytes)
			}
			counts = append(counts, len(b.Envelopes))
		}
		return counts
	}

	t.Run("everything", func(t *testing.T) {
		batches := ask(0, 0)
		if got := served(t, batches); !slices.Equal(got, vs) {
			t.Fatalf("served %d changes, want the %d resource changes in order", len(got), len(vs))
		}
		// 1100 small: 512, 512, then the last 76 with the first 4 big ones
		// (5 would be over 4 MiB), then the last 2 big ones.
		if got := sizes(batches); !slices.Equal(got, []int{512, 512, 80, 2}) {
			t.Fatalf("batches of %v", got)
		}
	})
	t.Run("after a position", func(t *testing.T) {
		if got := served(t, ask(vs[99], 0)); !slices.Equal(got, vs[100:]) {
			t.Fatalf("served %d changes from %d, want %d from %d", len(got), got[0], len(vs)-100, vs[100])
		}
	})
	t.Run("exactly a full batch", func(t *testing.T) {
		// The scan found BatchSize changes: the server cannot know it
		// ran out, and ends with an empty batch that is done.
		batches, err := request(t, p.host, s.id, &pb.SyncRequest{What: pb.SyncRequest_WHAT_RESOURCES, Origin: []byte(o2.id)})
		if err != nil {
			t.Fatal(err)
		}
		if got := served(t, batches); !slices.Equal(got, versions(t, full)) {
			t.Fatalf("served %d", len(got))
		}
		if got := sizes(batches); !slices.Equal(got, []int{512, 0}) {
			t.Fatalf("batches of %v", got)
		}
	})
	t.Run("limit", func(t *testing.T) {
		batches := ask(0, 600)
		if got := served(t, batches); !slices.Equal(got, vs[:600]) {
			t.Fatalf("served %d with limit 600", len(got))
		}
		if got := sizes(batches); !slices.Equal(got, []int{512, 88}) {
			t.Fatalf("batches of %v", got)
		}
	})
	t.Run("the last one", func(t *testing.T) {
		if got := served(t, ask(vs[len(vs)-1], 0)); len(got) != 0 {
			t.Fatalf("served %v after the last", got)
		}
	})
}

// Decisions are served in sequence order from any member, whoever signed
// them (the asker checks), in batches of BatchSize.
func TestServeDecisionsInSequenceOrder(t *testing.T) {
	net := newNetwork(t)
	m, p := net.node(), net.node()
	r := newOrigin(t)
	m.roles.set(nil, []peer.ID{m.id, p.id, r.id}, r.id)
	seqs := make([]uint64, 1100)
	for i := range seqs {
		seqs[i] = uint64(i + 1)
	}
	decs := r.decisions(seqs...)
	// Delivered out of order: 2 ahead of 1, held, then the rest.
	m.hold(decs[1])
	m.hold(decs[0])
	m.hold(decs[2:]...)
	net.connect(p, m)
	m.start()

	batches, err := request(t, p.host, m.id, &pb.SyncRequest{What: pb.SyncRequest_WHAT_DECISIONS, After: 40})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, b := range batches {
		for _, env := range b.Envelopes {
			body := &pb.Body{}
			if err := proto.Unmarshal(env.Body, body); err != nil {
				t.Fatal(err)
			}
			got = append(got, decisionSequence(body))
		}
	}
	served(t, batches)
	if !slices.Equal(got, seqs[40:]) {
		t.Fatalf("served sequences %v..., want 41 to 1100 in order", got[:min(5, len(got))])
	}
	if len(batches) != 3 || len(batches[0].Envelopes) != BatchSize {
		t.Fatalf("%d batches, the first of %d", len(batches), len(batches[0].Envelopes))
	}
	v := protocols.NewVerifier()
	for _, b := range batches {
		for _, env := range b.Envelopes {
			if _, signer, err := v.Open(env); err != nil || signer != r.id {
				t.Fatalf("served a decision that does not verify as the reviewer's: %v", err)
			}
		}
	}
}

// Own changes are served to the node that signed them, whatever their
// kind, and no one else's.
func TestServeOwnChangesOfTheAskerOnly(t *testing.T) {
	net := newNetwork(t)
	s, n, other := net.node(), net.node(), net.node()
	s.roles.set(nil, []peer.ID{n.id, other.id}, "")
	me := n.as()
	mine := append(me.resources(3, 64), me.other(pb.Kind_KIND_REVIEW_REQUEST, s.id))
	mine = append(mine, me.other(pb.Kind_KIND_PLANNER, s.id))
	s.hold(mine...)
	s.hold(other.as().resources(4, 64)...)
	vs := versions(t, mine)
	net.connect(n, s)
	s.start()
	batches, err := request(t, n.host, s.id, &pb.SyncRequest{What: pb.SyncRequest_WHAT_OWN, After: vs[0]})
	if err != nil {
		t.Fatal(err)
	}
	if got := served(t, batches); !slices.Equal(got, vs[1:]) {
		t.Fatalf("served %v, want %v", got, vs[1:])
	}
	for _, b := range batches {
		for _, env := range b.Envelopes {
			body := &pb.Body{}
			_ = proto.Unmarshal(env.Body, body)
			if peer.ID(body.Origin) != n.id {
				t.Fatalf("served a change of %s", peer.ID(body.Origin))
			}
		}
	}
	if n := s.logs.count("sync request refused"); n != 0 {
		t.Fatalf("%d refusals", n)
	}
}
