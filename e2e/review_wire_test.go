package e2e

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/wiretest"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/stream"
)

// sendOne writes one change in a batch on a fresh stream and reports
// whether it was answered (false: the stream was reset).
func sendOne(t *testing.T, h host.Host, to peer.ID, signer crypto.PrivKey, body *pb.Body, lane stream.Lane) bool {
	t.Helper()
	env := forge(t, signer, body)
	proto_, _ := protocols.ProtocolFor(body.Kind, "insert")
	_, _, err := wiretest.Send(h, to, proto_, wiretest.Batch(1, uint32(lane), 0, env))
	return err == nil
}

// TestReviewWireRefusals: a request from a peer that is not a member, and a
// decision not signed by the reviewer, reset the stream and write nothing.
func TestReviewWireRefusals(t *testing.T) {
	net := reviewNet(t)
	strangerKey, stranger := key(t)
	h, err := libp2p.New(libp2p.Identity(strangerKey), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c := net.Node(nC)
	h.Peerstore().AddAddrs(c.ID(), c.Host().Addrs(), time.Hour)
	rr, _ := proto.Marshal(&pb.ReviewRequest{RequestId: 1, TableId: 1, TableName: "tb", Type: "insert", Data: []byte(`{}`)})
	if sendOne(t, h, c.ID(), strangerKey, &pb.Body{Origin: []byte(stranger), OriginVersion: 1, Kind: pb.Kind_KIND_REVIEW_REQUEST,
		DataType: "tb", Payload: rr, To: []byte(c.ID())}, stream.LaneRequest) {
		t.Error("the reviewer acked a request from a stranger")
	}
	if rs, _ := c.Review().Requests(""); len(rs) != 0 {
		t.Fatalf("the reviewer stored %d requests", len(rs))
	}
	// A member (A) sends B a decision signed by A, not by the reviewer.
	aKey, err := net.Homes[nA].Identity()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := proto.Marshal(&pb.ReviewDecision{Origin: "x/1", Sequence: 1, Status: "accepted", Data: []byte(`{"v":1}`),
		Request: &pb.ReviewRequest{RequestId: 1, TableId: 1, TableName: "tb", Type: "insert", Data: []byte(`{}`)}})
	if sendOne(t, net.Node(nA).Host(), net.IDs[nB], aKey, &pb.Body{Origin: []byte(net.IDs[nA]), OriginVersion: 1,
		Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "tb", Payload: d}, stream.LaneDecision) {
		t.Error("B acked a decision not signed by the reviewer")
	}
	b := net.Node(nB)
	if rows, _ := b.Rows("tb"); len(rows) != 0 || b.Review().Applied() != 0 {
		t.Fatal("B applied a decision not signed by the reviewer")
	}
	if cs, _ := b.Store().Changes(0, 10); len(cs) != 0 {
		t.Fatalf("B stored %d changes", len(cs))
	}
}
