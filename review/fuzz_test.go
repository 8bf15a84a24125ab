package review

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

type fuzzRoles struct{ self, reviewer peer.ID }

func (r fuzzRoles) Self() peer.ID                { return r.self }
func (r fuzzRoles) SelfName() string             { return "N" }
func (r fuzzRoles) Reviewer() peer.ID            { return r.reviewer }
func (r fuzzRoles) InReviewGroup(p peer.ID) bool { return p != "" && p == r.reviewer }
func (r fuzzRoles) ReviewGroup() []peer.ID       { return []peer.ID{r.reviewer} }
func (r fuzzRoles) IsMember(peer.ID) bool        { return true }
func (r fuzzRoles) Members() []peer.ID           { return nil }
func (r fuzzRoles) Name(p peer.ID) string        { return "P" }
func (fuzzSink) Publish(string, any)             {}

type fuzzSink struct{}

var sentinels = []error{ferry.ErrBadRequest, ferry.ErrUnknownAction, ferry.ErrNotOwner, ferry.ErrTooLarge,
	ferry.ErrNotFound, ferry.ErrConflict, ferry.ErrForbidden, ferry.ErrUnavailable}

// inUsersWords fails the test when an error an app or operator would read
// speaks Go (internal/wording); what the input itself holds does not count.
func inUsersWords(t *testing.T, err error, input []byte) {
	t.Helper()
	if g := wording.GoInternals(err.Error(), string(input)); g != "" {
		t.Fatalf("%q: the error %q speaks Go (%q)", input, err, g)
	}
}

func wrapsSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func fuzzService(f *testing.F, reviewer bool) (*Service, *store.Store, crypto.PrivKey) {
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	self, _ := peer.IDFromPrivateKey(key)
	rev := self
	if !reviewer {
		_, pk, _ := crypto.GenerateEd25519Key(rand.Reader)
		rev, _ = peer.IDFromPublicKey(pk)
	}
	st, err := store.Open(f.TempDir(), store.Options{Signer: key})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	return New(Deps{Store: st, Roles: fuzzRoles{self, rev}, Publisher: fuzzSink{}, MaxMessageBytes: 4096}), st, key
}

func wait[T any](t *testing.T, call func(func(T, error))) (T, error) {
	type r struct {
		v   T
		err error
	}
	ch := make(chan r, 1)
	call(func(v T, err error) { ch <- r{v, err} })
	select {
	case x := <-ch:
		return x.v, x.err
	case <-time.After(10 * time.Second):
		t.Fatal("no answer")
	}
	panic("unreachable")
}

// FuzzSubmitRequest: the body of <prefix>.review.submit. Any input gets an
// answer; a refusal wraps a wire code and writes nothing.
func FuzzSubmitRequest(f *testing.F) {
	s, st, _ := fuzzService(f, false)
	for _, seed := range []string{
		`{"type":"insert","table_name":"tb1","table_id":3,"data":{"unique_num":40123,"name":"name3"},"description":"adding"}`,
		`{"type":"delete","table_name":"tb1","table_id":3}`, `{"type":"update","table_name":"tb1","table_id":3,"data":{"id":3}}`,
		`{"type":"upsert","table_name":"tb1","table_id":3,"data":{}}`, `{"type":"insert","table_name":"a.b","table_id":1,"data":{}}`,
		`{"type":"insert","table_name":"tb","table_id":0,"data":{}}`, `{"type":"insert","table_name":"tb","table_id":1,"data":[1]}`,
		`{"type":"insert","table_name":"tb","table_id":1,"data":{"id":2}}`, `{}`, `null`, `[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req SubmitRequest
		if json.Unmarshal(body, &req) != nil {
			// The bridge answers bad_request before the service, in the app's words.
			if err := wording.DecodeJSON(body, &SubmitRequest{}, ""); !errors.Is(err, ferry.ErrBadRequest) {
				t.Fatalf("%q: encoding/json refuses it, the strict decoder says %v", body, err)
			} else {
				inUsersWords(t, err, body)
			}
			return
		}
		before, _ := st.Counter(store.CtrRequest)
		row, err := wait(t, func(done func(Row, error)) { s.Submit(context.Background(), req, done) })
		after, _ := st.Counter(store.CtrRequest)
		if err != nil {
			inUsersWords(t, err, body)
			if !wrapsSentinel(err) {
				t.Fatalf("error without a wire code: %v", err)
			}
			if after != before {
				t.Fatalf("a refused submit wrote a request")
			}
			return
		}
		if row.Status != "waiting" || row.ID != after || !json.Valid(row.Data) {
			t.Fatalf("row %+v", row)
		}
	})
}

// FuzzDecideRequest: the body of a decision at the reviewer.
func FuzzDecideRequest(f *testing.F) {
	s, st, _ := fuzzService(f, true)
	for _, seed := range []string{
		`{"request_id":1,"decision":"accept"}`, `{"request_id":1,"decision":"reject","note":"no"}`,
		`{"request_id":1,"decision":"edit","set":{"name":"x"}}`, `{"request_id":1,"decision":"edit","data":{"a":1}}`,
		`{"request_id":1,"decision":"edit"}`, `{"request_id":99,"decision":"accept"}`, `{"request_id":1,"decision":"maybe"}`,
		`{"request_id":1,"decision":"accept","data":{"a":1}}`, `{"request_id":1,"decision":"edit","set":{"id":"2"}}`,
	} {
		f.Add([]byte(seed), uint8(0))
	}
	f.Fuzz(func(t *testing.T, body []byte, typ uint8) {
		var req DecideRequest
		if json.Unmarshal(body, &req) != nil {
			if err := wording.DecodeJSON(body, &DecideRequest{}, ""); !errors.Is(err, ferry.ErrBadRequest) {
				t.Fatalf("%q: encoding/json refuses it, the strict decoder says %v", body, err)
			} else {
				inUsersWords(t, err, body)
			}
			return
		}
		// A fresh waiting request to decide on.
		types := []string{"insert", "update", "delete"}
		sub, err := wait(t, func(done func(Row, error)) {
			s.Submit(context.Background(), SubmitRequest{Type: types[int(typ)%3], TableName: "tb", TableID: 1, Data: json.RawMessage(`{"n":1}`)}, done)
		})
		if err != nil {
			t.Fatal(err)
		}
		if req.RequestID == 1 {
			req.RequestID = sub.ID
		}
		seq, _ := st.Counter(store.CtrDecision)
		rows, _ := st.Rows("tb")
		row, err := wait(t, func(done func(Row, error)) { s.Decide(context.Background(), req, done) })
		seq2, _ := st.Counter(store.CtrDecision)
		rows2, _ := st.Rows("tb")
		if err != nil {
			inUsersWords(t, err, body)
			if !wrapsSentinel(err) {
				t.Fatalf("error without a wire code: %v", err)
			}
			if seq2 != seq || len(rows2) != len(rows) {
				t.Fatal("a refused decision changed the ledger")
			}
			return
		}
		if row.Status == "waiting" || (row.Status == "rejected") != (seq2 == seq) {
			t.Fatalf("decided row %+v (sequence %d -> %d)", row, seq, seq2)
		}
	})
}

// FuzzApplyDecision: a decision payload signed by the reviewer, as a member
// receives it. It is applied, held, a duplicate, or refused: never a panic,
// never a half write.
func FuzzApplyDecision(f *testing.F) {
	s, st, _ := fuzzService(f, false)
	revKey, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	rev, _ := peer.IDFromPrivateKey(revKey)
	s.roles = fuzzRoles{self: s.roles.Self(), reviewer: rev}
	good, _ := proto.Marshal(&pb.ReviewDecision{Origin: "p/1", Sequence: 1, Status: "accepted", Data: []byte(`{"v":1}`),
		Request: &pb.ReviewRequest{RequestId: 1, TableId: 1, TableName: "tb", Type: "insert", Data: []byte(`{}`)}})
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x01})
	var ov uint64
	f.Fuzz(func(t *testing.T, payload []byte) {
		ov++
		body := &pb.Body{Origin: []byte(rev), OriginVersion: ov, Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "tb", Payload: payload}
		b, _ := proto.Marshal(body)
		envs, err := protocols.Seal(revKey, [][]byte{b})
		if err != nil {
			t.Fatal(err)
		}
		in, err := stream.InboundOf(envs[0], body, rev)
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Update(context.Background(), func(tx *store.Txn) error {
			sp := tx.Savepoint()
			_, err := s.ApplyDecision(tx, in)
			var rej *stream.RejectError
			if errors.As(err, &rej) {
				tx.RollbackTo(sp)
				return nil
			}
			return err
		})
	})
}
