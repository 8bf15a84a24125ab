package reviewgroup

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols/pb"
)

// Whatever a member forwards, the leader answers with a reply (done, or a
// code and a message) and never panics; a request that is no message is
// refused by the decoder before anything is done.
func FuzzForwardRequest(f *testing.F) {
	for _, r := range []*pb.ForwardRequest{
		{Op: pb.ForwardOp_FORWARD_OP_STATUS},
		{Op: pb.ForwardOp_FORWARD_OP_APPLY, Command: encode("seed")},
		{Op: pb.ForwardOp_FORWARD_OP_APPLY, Command: []byte("{")},
		{Op: pb.ForwardOp_FORWARD_OP_READ_INDEX},
		{Op: pb.ForwardOp_FORWARD_OP_ADD_VOTER, Peer: []byte("x")},
		{Op: pb.ForwardOp_FORWARD_OP_REMOVE_SERVER},
		{Op: 42},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff})
	c := newCluster(f, 1)
	a := c.members[0]
	a.start(c.ids(a))
	c.leader(10*time.Second, a)
	f.Fuzz(func(t *testing.T, b []byte) {
		req := &pb.ForwardRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rep := a.group.answer(ctx, a.id, req)
		if _, known := pb.ForwardOp_name[int32(req.Op)]; !known && rep.Code != ferry.CodeBadRequest {
			t.Fatalf("op %v answered %+v, want bad_request", req.Op, rep)
		}
		if rep.Code != "" && rep.Message == "" {
			t.Fatalf("code %s without a message", rep.Code)
		}
		if a.group.State() != raft.Leader {
			t.Fatalf("after %+v the member is %s", req, a.group.State())
		}
	})
}

// A snapshot is read back with its index; anything else is refused with an
// error, never a panic, and leaves the state machine as it was.
func FuzzSnapshotRestore(f *testing.F) {
	var good bytes.Buffer
	good.WriteString(snapshotMagic)
	_ = binary.Write(&good, binary.BigEndian, uint64(7))
	good.WriteString(`{"applied":["a"],"answers":{"a":{"result":"a#1"}}}`)
	f.Add(good.Bytes())
	f.Add([]byte("FRG1"))
	f.Add([]byte(`{"applied":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec := newRecorder()
		w := &fsm{user: rec}
		w.set(3)
		err := w.Restore(io.NopCloser(bytes.NewReader(b)))
		if err != nil {
			if w.last.Load() != 3 {
				t.Fatalf("a failed restore moved the applied index to %d", w.last.Load())
			}
			return
		}
		if !bytes.HasPrefix(b, []byte(snapshotMagic)) || len(b) < 12 {
			t.Fatalf("%q was restored", b)
		}
		if got := binary.BigEndian.Uint64(b[4:12]); w.last.Load() != got {
			t.Fatalf("restored index %d, the header says %d", w.last.Load(), got)
		}
		if bytes.Equal(b, good.Bytes()) && !slices.Equal(rec.sequence(), []string{"a"}) {
			t.Fatalf("restored %v", rec.sequence())
		}
	})
}
