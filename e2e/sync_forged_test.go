package e2e

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

func key(t *testing.T) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return k, id
}

func forge(t *testing.T, signer crypto.PrivKey, body *pb.Body) *pb.Envelope {
	t.Helper()
	b, _ := proto.Marshal(body)
	envs, err := protocols.Seal(signer, [][]byte{b})
	if err != nil {
		t.Fatal(err)
	}
	return envs[0]
}

func metric(t *testing.T, n *node.Node, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, _ := n.Registry().Gather()
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// TestSyncDropsForgedAnswers: a partner that answers sync with a change its
// origin did not sign, or a decision the reviewer did not sign, gets
// nothing applied.
func TestSyncDropsForgedAnswers(t *testing.T) {
	rogueKey, rogue := key(t)
	otherKey, _ := key(t)
	_, reviewer := key(t) // configured, never running
	_, origin := key(t)   // a partner of V's, never running: the rogue serves its chain
	h, err := libp2p.New(libp2p.Identity(rogueKey), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.SetStreamHandler(protocols.Sync, func(s network.Stream) {
		defer s.Close()
		req := &pb.SyncRequest{}
		if protocols.NewFrameReader(s, 1024).Read(req) != nil {
			_ = s.Reset()
			return
		}
		var env *pb.Envelope
		if req.What == pb.SyncRequest_WHAT_RESOURCES {
			// Claims to be the absent partner's change, signed by another key.
			env = forge(t, otherKey, &pb.Body{Origin: []byte(origin), OriginVersion: 1, Kind: pb.Kind_KIND_RESOURCE_CREATE,
				DataType: "vm", Payload: []byte(`{"id":"evil","creator_id":"` + origin.String() + `"}`)})
		} else {
			d, _ := proto.Marshal(&pb.ReviewDecision{Origin: "x/1", Sequence: 1, Status: "accepted", Data: []byte(`{"evil":true}`),
				Request: &pb.ReviewRequest{RequestId: 1, TableId: 1, TableName: "tb1", Type: "insert", Data: []byte(`{}`)}})
			// Claims to come from the reviewer, signed by the rogue.
			env = forge(t, rogueKey, &pb.Body{Origin: []byte(reviewer), OriginVersion: 1, Kind: pb.Kind_KIND_REVIEW_DECISION,
				DataType: "tb1", Payload: d})
		}
		fw := protocols.NewFrameWriter(s, 1<<20)
		_ = fw.Write(&pb.SyncBatch{Envelopes: []*pb.Envelope{env}, Done: true})
		_ = fw.Flush()
	})
	net := testnet.Start(t, testnet.Options{N: 1, Names: []string{"V"}, Configure: func(_ int, c *node.Config) {
		c.Partners = []string{rogue.String(), origin.String()}
		c.Reviewer = reviewer.String()
	}})
	v := net.Node(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, peer.AddrInfo{ID: v.ID(), Addrs: v.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	v.CatchUp().Everything()
	testnet.WaitFor(t, 20*time.Second, "both forged answers seen", func() bool {
		return metric(t, v, "ferry_sync_changes_total", map[string]string{"what": "resources", "outcome": "forged"}) >= 1 &&
			metric(t, v, "ferry_sync_changes_total", map[string]string{"what": "decisions", "outcome": "forged"}) >= 1
	})
	if cs, _ := v.Store().Changes(0, 10); len(cs) != 0 {
		t.Fatalf("forged changes were stored: %d", len(cs))
	}
	if rows, _ := v.Store().Rows("tb1"); len(rows) != 0 || v.Review().Applied() != 0 {
		t.Fatal("a forged decision was applied")
	}
}
