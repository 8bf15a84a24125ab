package propagate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// The fuzz targets of the NATS payloads the service decodes (the bodies of
// <prefix>.propagate and <prefix>.changes) and of the change bodies it
// applies from peers. Run one with e.g.
//
//	go test ./propagate/ -run '^$' -fuzz '^FuzzPropagateRequest$' -fuzztime 60s
//
// Each target opens one store and one service before f.Fuzz; iterations share
// them, so later inputs meet the resources earlier ones created.

// fuzzMaxMessageBytes is limits.max_message_bytes for the fuzz service: the
// smallest value the configuration allows, so the fuzzer reaches the limit.
const fuzzMaxMessageBytes = 1024

// answerTimeout bounds the wait for done.
const answerTimeout = 10 * time.Second

var sentinels = []error{ferry.ErrBadRequest, ferry.ErrUnknownAction, ferry.ErrNotOwner, ferry.ErrTooLarge,
	ferry.ErrNotFound, ferry.ErrConflict, ferry.ErrForbidden, ferry.ErrUnavailable}

// sentinelOf returns the sentinel error err wraps, or nil.
func sentinelOf(err error) error {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	return nil
}

// fixedKey is an ed25519 key from a fixed seed, so peer ids, and the fuzz
// corpus that names them, are the same on every run.
func fixedKey(t testing.TB, seed byte) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}

type fuzzRoles struct{ self, partner peer.ID }

func (r fuzzRoles) Self() peer.ID            { return r.self }
func (r fuzzRoles) IsPartner(p peer.ID) bool { return p == r.partner }
func (r fuzzRoles) Partners() []peer.ID      { return []peer.ID{r.partner} }
func (r fuzzRoles) Name(p peer.ID) string {
	if p == r.partner {
		return "partner"
	}
	return ""
}

// fuzzSender records what the log tells the sender (store.Follow) and the
// planner streams the service closes.
type fuzzSender struct {
	mu     sync.Mutex
	items  []store.OwnEntry
	closed int
}

func (s *fuzzSender) Notify(e store.OwnEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items = append(s.items, e)
}

func (s *fuzzSender) CloseStream(peer.ID, protocol.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed++
	return true
}

func (s *fuzzSender) enqueued() []store.OwnEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]store.OwnEntry(nil), s.items...)
}

// fuzzPublisher records events and whether the bridge could encode them.
type fuzzPublisher struct {
	mu     sync.Mutex
	events []string
	err    error
}

func (p *fuzzPublisher) Publish(suffix string, v any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := json.Marshal(v); err != nil && p.err == nil {
		p.err = fmt.Errorf("event %s does not encode: %w", suffix, err)
	}
	p.events = append(p.events, suffix)
}

func (p *fuzzPublisher) PublishRaw(suffix string, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !json.Valid(data) && p.err == nil {
		p.err = fmt.Errorf("event %s is not JSON: %s", suffix, data)
	}
	p.events = append(p.events, suffix)
}

func (p *fuzzPublisher) state() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.events), p.err
}

type fuzzNode struct {
	st                       *store.Store
	svc                      *Service
	self, partner, stranger  peer.ID
	snd                      *fuzzSender
	pub                      *fuzzPublisher
	selfStr, partnerStr, str string
}

// newFuzzNode opens a store and a service that live as long as the fuzz
// target (one per fuzzing worker).
func newFuzzNode(f *testing.F) *fuzzNode {
	f.Helper()
	key, self := fixedKey(f, 1)
	_, partner := fixedKey(f, 2)
	_, stranger := fixedKey(f, 3)
	quiet := slog.New(slog.DiscardHandler)
	st, err := store.Open(f.TempDir(), store.Options{Signer: key, Logger: quiet})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		if err := st.Close(); err != nil {
			f.Error(err)
		}
	})
	n := &fuzzNode{st: st, self: self, partner: partner, stranger: stranger, snd: &fuzzSender{}, pub: &fuzzPublisher{},
		selfStr: self.String(), partnerStr: partner.String(), str: stranger.String()}
	st.Follow(n.snd.Notify)
	n.svc, err = New(Deps{Store: st, Roles: fuzzRoles{self: self, partner: partner}, Streams: n.snd,
		Publisher: n.pub, MaxMessageBytes: fuzzMaxMessageBytes, Logger: quiet})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(n.svc.Close)
	return n
}

func (n *fuzzNode) counter(t *testing.T, name string) uint64 {
	t.Helper()
	v, err := n.st.Counter(name)
	if err != nil {
		t.Fatalf("counter %s: %v", name, err)
	}
	return v
}

type answer struct {
	res Result
	err error
}

// propagate runs one request and waits for its answer; done must be called
// exactly once.
func (n *fuzzNode) propagate(t *testing.T, req Request) answer {
	t.Helper()
	ch := make(chan answer, 2)
	var calls atomic.Int32
	n.svc.Propagate(context.Background(), req, func(res Result, err error) {
		calls.Add(1)
		ch <- answer{res, err}
	})
	var a answer
	select {
	case a = <-ch:
	case <-time.After(answerTimeout):
		t.Fatalf("no answer to %+v after %v", req, answerTimeout)
	}
	if c := calls.Load(); c != 1 {
		t.Fatalf("done called %d times", c)
	}
	return a
}

// checkDelivered checks what one accepted request owes its receivers: a
// log entry for the partner, whose envelope verifies, from this node, of the
// request's kind and data type, in a frame that the receiver's limit admits.
func (n *fuzzNode) checkDelivered(t *testing.T, req Request, res Result, items []store.OwnEntry) {
	t.Helper()
	kinds := map[string]pb.Kind{ActionCreate: pb.Kind_KIND_RESOURCE_CREATE, ActionUpdate: pb.Kind_KIND_RESOURCE_UPDATE,
		ActionDelete: pb.Kind_KIND_RESOURCE_DELETE, ActionConsiders: pb.Kind_KIND_CONSIDERS, ActionPlanner: pb.Kind_KIND_PLANNER}
	recv, _ := json.Marshal(res["receivers"])
	if len(items) != 1 || string(recv) != fmt.Sprintf(`[{"id":%q,"name":"partner"}]`, n.partnerStr) {
		t.Fatalf("%s: %d entries noted, result %v; want one, for the partner", req.Action, len(items), res)
	}
	it := items[0]
	if it.Version != res["version"] {
		t.Fatalf("%s: entry %+v for result %v", req.Action, it, res)
	}
	switch req.Action {
	case ActionConsiders, ActionPlanner:
		if len(it.To) != 1 || it.To[0] != n.partner {
			t.Fatalf("%s: entry addressed to %v, want the partner", req.Action, it.To)
		}
	default:
		if len(it.To) != 0 {
			t.Fatalf("%s: resource entry addressed to %v, want broadcast", req.Action, it.To)
		}
	}
	if want, _ := protocols.ProtocolFor(kinds[req.Action], ""); it.Protocol != want {
		t.Fatalf("%s: delivery on %s, want %s", req.Action, it.Protocol, want)
	}
	if stored, err := n.st.OwnEntry(it.Version); err != nil || stored.Lane != it.Lane || stored.Protocol != it.Protocol {
		t.Fatalf("%s: stored entry %+v (%v), noted %+v", req.Action, stored, err, it)
	}
	raw, err := n.st.ChangeEnvelope(it.Version)
	if err != nil {
		t.Fatalf("%s: no change at version %d: %v", req.Action, it.Version, err)
	}
	env := &pb.Envelope{}
	if err := proto.Unmarshal(raw, env); err != nil {
		t.Fatalf("%s: stored envelope does not decode: %v", req.Action, err)
	}
	body, origin, err := protocols.NewVerifier().Open(env)
	if err != nil {
		t.Fatalf("%s: stored envelope does not verify: %v", req.Action, err)
	}
	if origin != n.self || body.Kind != kinds[req.Action] || body.DataType != req.DataType || body.OriginVersion != res["version"] {
		t.Fatalf("%s: stored body %v does not match the request %+v and result %v", req.Action, body, req, res)
	}
	switch req.Action {
	case ActionConsiders, ActionPlanner:
		if !bytes.Equal(body.Payload, req.Payload) {
			t.Fatalf("%s: payload changed on the way: %s, sent %s", req.Action, body.Payload, req.Payload)
		}
	default:
		var doc struct {
			ID        json.RawMessage `json:"id"`
			CreatorID string          `json:"creator_id"`
		}
		if err := json.Unmarshal(body.Payload, &doc); err != nil || doc.CreatorID != n.selfStr {
			t.Fatalf("%s: sealed resource %s lacks creator_id %s (%v)", req.Action, body.Payload, n.selfStr, err)
		}
	}
	// The stream layer frames a Batch around the stored envelope bytes
	// and refuses frames over MaxMessageBytes+FrameOverhead, so an accepted
	// request must fit in one, alone.
	head, err := proto.Marshal(&pb.Batch{Epoch: n.st.Epoch(), Lane: uint32(it.Lane), After: ^uint64(0), HeadSequence: ^uint64(0)})
	if err != nil {
		t.Fatal(err)
	}
	frame := len(head) + protowire.SizeTag(4) + protowire.SizeBytes(len(raw))
	if limit := fuzzMaxMessageBytes + protocols.FrameOverhead; frame > limit {
		t.Fatalf("%s accepted with a %d-byte payload (limit %d), but its delivery frame is %d bytes, over the %d the stream layer sends (sealed payload %d bytes)",
			req.Action, len(req.Payload), fuzzMaxMessageBytes, frame, limit, len(body.Payload))
	}
}

func FuzzPropagateRequest(f *testing.F) {
	n := newFuzzNode(f)
	pad := strings.Repeat("x", fuzzMaxMessageBytes)
	for _, s := range []string{
		// Valid requests, in an order that makes each one succeed.
		`{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":2}}`,
		`{"action":"create","data_type":"vm","payload":{"id":42,"cpu":1}}`,
		`{"action":"create","data_type":"vm","payload":{"id":"vm2","creator_id":"` + n.selfStr + `"}}`,
		`{"action":"update","data_type":"vm","payload":{"id":"vm1","cpu":4}}`,
		`{"action":"delete","data_type":"vm","payload":{"id":"vm1"}}`,
		`{"action":"create","data_type":"vm","payload":{"id":"vm1","cpu":8}}`, // again, after the delete
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":["` + n.partnerStr + `","` + n.partnerStr + `"],"note":"x"}}`,
		`{"action":"planner","data_type":"plan","payload":{"peer_id":"` + n.partnerStr + `","step":1}}`,
		`{"action":"close_planner","payload":{"peer_id":"` + n.partnerStr + `"}}`,
		`{"action":"planner","data_type":"plan","payload":{"peer_id":"` + n.partnerStr + `","step":2}}`, // reopens
		`{"action":"create","data_type":"doc","payload":{"id":"d1","html":"<b>Tom & Jerry</b>"}}`,
		" {\"action\" : \"create\" ,\n\"data_type\":\"A_b-9\",\"payload\": {\"id\": \"sp\" , \"n\" : [ 1 , 2 ] } }\n",
		`{"ACTION":"create","Data_Type":"vm","PAYLOAD":{"id":"case"}}`,
		// Refused requests.
		`{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`,     // exists
		`{"action":"update","data_type":"vm","payload":{"id":"missing"}}`, // not found
		`{"action":"delete","data_type":"vm","payload":{"id":"missing"}}`, // not found
		`{"action":"explode","data_type":"vm","payload":{"id":"x"}}`,      // unknown action
		`{"data_type":"vm","payload":{"id":"x"}}`,                         // action missing
		`{"action":"create","payload":{"id":"x"}}`,                        // data_type missing
		`{"action":"create","data_type":"a.b","payload":{"id":"x"}}`,      // data_type not a subject token
		`{"action":"create","data_type":"` + strings.Repeat("d", 65) + `","payload":{"id":"x"}}`,
		`{"action":"create","data_type":"vm"}`,                            // payload missing
		`{"action":"create","data_type":"vm","payload":null}`,             // payload null
		`{"action":"create","data_type":"vm","payload":"{\"id\":\"x\"}"}`, // payload a string, not an object
		`{"action":"create","data_type":"vm","payload":[{"id":"x"}]}`,     // payload an array
		`{"action":"create","data_type":"vm","payload":{}}`,               // id missing
		`{"action":"create","data_type":"vm","payload":{"id":""}}`,        // id empty
		`{"action":"create","data_type":"vm","payload":{"id":null}}`,      // id null
		`{"action":"create","data_type":"vm","payload":{"id":{"a":1}}}`,   // id an object
		`{"action":"create","data_type":"vm","payload":{"id":-1.5e300}}`,  // id a number
		`{"action":"create","data_type":"vm","payload":{"id":"` + strings.Repeat("i", store.MaxNameBytes+1) + `"}}`,
		`{"action":"create","data_type":"vm","payload":{"id":"big","pad":"` + pad + `"}}`,                 // over max_message_bytes
		`{"action":"create","data_type":"vm","payload":{"id":"vm9","creator_id":"` + n.partnerStr + `"}}`, // another peer's
		`{"action":"create","data_type":"vm","payload":{"id":"vm9","creator_id":7}}`,
		`{"action":"considers","data_type":"vm","payload":{"note":"x"}}`,                        // no peer_ids
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":[]}}`,                     // empty peer_ids
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":"` + n.partnerStr + `"}}`, // not a list
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":["not-a-peer"]}}`,
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":["` + n.str + `"]}}`,     // not a partner
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":["` + n.selfStr + `"]}}`, // self
		`{"action":"planner","data_type":"plan","payload":{"step":1}}`,                         // no peer_id
		`{"action":"planner","data_type":"plan","payload":{"peer_id":"` + n.str + `"}}`,
		`{"action":"close_planner","payload":{"peer_id":"QmNotAPeer"}}`,
		`{"action":"search","data_type":"vm","payload":{"text":"vm"}}`, // no searcher: unavailable
		`{"action":"create","data_type":"vm","payload":{"id":"dup","id":"dup2"}}`,
		"{\"action\":\"create\",\"data_type\":\"vm\",\"payload\":{\"id\":\"bad\xff\"}}", // invalid UTF-8
		`{"action":"create","data_type":"vm","payload":{"id":"\ud800"}}`,
		`not json`,
		`{"action":"create","data_type":"vm","payload":{"id":"x"}`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		var req Request
		if json.Unmarshal(data, &req) != nil {
			return // the NATS handler answers bad_request itself
		}
		ver := n.counter(t, store.CtrVersion)
		sent := len(n.snd.enqueued())

		a := n.propagate(t, req)

		verAfter := n.counter(t, store.CtrVersion)
		items := n.snd.enqueued()[sent:]
		if a.err != nil {
			if sentinelOf(a.err) == nil {
				t.Fatalf("%+v: error %q wraps no sentinel of package ferry (it would answer as code %q)", req, a.err, ferry.Code(a.err))
			}
			if verAfter != ver || len(items) != 0 {
				t.Fatalf("%+v refused (%v), but the store moved: version %d -> %d, %d entries noted",
					req, a.err, ver, verAfter, len(items))
			}
			return
		}
		if a.res == nil {
			t.Fatalf("%+v: no error and no result", req)
		}
		if _, err := json.Marshal(a.res); err != nil {
			t.Fatalf("%+v: result %v does not encode: %v", req, a.res, err)
		}
		switch req.Action {
		case ActionClosePlanner:
			if verAfter != ver || len(items) != 0 {
				t.Fatalf("close_planner changed the change log: version %d -> %d, %d entries", ver, verAfter, len(items))
			}
		case ActionCreate, ActionUpdate, ActionDelete, ActionConsiders, ActionPlanner:
			if verAfter <= ver || a.res["version"] != verAfter {
				t.Fatalf("%+v accepted (%v), but version %d -> %d", req, a.res, ver, verAfter)
			}
			n.checkDelivered(t, req, a.res, items)
		default:
			t.Fatalf("%+v: action %q succeeded", req, req.Action)
		}
	})
}

func FuzzChangesRequest(f *testing.F) {
	n := newFuzzNode(f)
	// A change log of every kind, review payloads included.
	reqs := []string{
		`{"action":"create","data_type":"vm","payload":{"id":"vm1"}}`,
		`{"action":"update","data_type":"vm","payload":{"id":"vm1","cpu":2}}`,
		`{"action":"considers","data_type":"vm","payload":{"peer_ids":["` + n.partnerStr + `"]}}`,
		`{"action":"planner","data_type":"plan","payload":{"peer_id":"` + n.partnerStr + `"}}`,
		`{"action":"delete","data_type":"vm","payload":{"id":"vm1"}}`,
	}
	for _, s := range reqs {
		var req Request
		if err := json.Unmarshal([]byte(s), &req); err != nil {
			f.Fatal(err)
		}
		ch := make(chan error, 1)
		n.svc.Propagate(context.Background(), req, func(_ Result, err error) { ch <- err })
		if err := <-ch; err != nil {
			f.Fatalf("%s: %v", s, err)
		}
	}
	rr, _ := proto.Marshal(&pb.ReviewRequest{RequestId: 1, TableName: "t", Type: "insert", Data: []byte(`{"a":1}`)})
	rd, _ := proto.Marshal(&pb.ReviewDecision{Origin: "x/1", Status: "accepted", Data: []byte(`{"a":1}`)})
	for _, b := range []*pb.Body{
		{Origin: []byte(n.self), Kind: pb.Kind_KIND_REVIEW_REQUEST, DataType: "t", Payload: rr},
		{Origin: []byte(n.self), Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "t", Payload: rd},
		{Origin: []byte(n.self), Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "t", Payload: []byte{0xff}},
		{Origin: []byte(n.self), Kind: pb.Kind(99), DataType: "t", Payload: []byte("not json")},
	} {
		if err := n.st.Update(context.Background(), func(tx *store.Txn) error {
			_, _, err := tx.AppendOwn(b)
			return err
		}); err != nil {
			f.Fatal(err)
		}
	}
	held, err := n.st.Changes(0, 1<<20)
	if err != nil {
		f.Fatal(err)
	}
	after := func(since uint64) int { // changes held after a version (versions are sparse)
		k := 0
		for _, c := range held {
			if c.Version > since {
				k++
			}
		}
		return k
	}
	v3 := strconv.FormatUint(held[2].Version, 10)
	for _, s := range []string{
		``, `{}`, `{"since":0}`, `{"since":` + v3 + `}`, `{"since":` + v3 + `,"limit":2}`, `{"since":9}`, `{"since":1000}`,
		`{"limit":1}`, `{"limit":10000}`, `{"limit":10001}`, `{"limit":-1}`, `{"since":-1}`, `{"since":1.5}`,
		`{"since":"3"}`, `{"Since":2,"LIMIT":3}`, `{"since":null}`, `[]`, `null`, `not json`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		var req ChangesRequest
		if len(data) > 0 && json.Unmarshal(data, &req) != nil {
			return // the NATS handler answers bad_request itself
		}
		changes, next, err := n.svc.Changes(req)
		if err != nil {
			if !errors.Is(err, ferry.ErrBadRequest) || changes != nil {
				t.Fatalf("%+v: error %v (want bad_request), %d changes", req, err, len(changes))
			}
			if req.Limit >= 0 && req.Limit <= MaxChangesLimit {
				t.Fatalf("%+v: valid limit refused: %v", req, err)
			}
			return
		}
		limit := req.Limit
		if limit == 0 {
			limit = DefaultChangesLimit
		}
		if len(changes) > limit {
			t.Fatalf("%+v: %d changes, over the limit %d", req, len(changes), limit)
		}
		prev := req.Since
		for i, c := range changes {
			if c.Version <= prev {
				t.Fatalf("%+v: change %d has version %d, not after %d", req, i, c.Version, prev)
			}
			prev = c.Version
			if !json.Valid(c.Payload) || c.Origin != n.selfStr {
				t.Fatalf("%+v: change %d badly rendered: %+v", req, i, c)
			}
		}
		if next != prev {
			t.Fatalf("%+v: next is %d, want %d", req, next, prev)
		}
		if want := min(limit, after(req.Since)); len(changes) != want {
			t.Fatalf("%+v: %d changes, want %d of the %d held", req, len(changes), want, len(held))
		}
		if _, err := json.Marshal(map[string]any{"changes": changes, "next": next}); err != nil {
			t.Fatalf("%+v: answer does not encode: %v", req, err)
		}
	})
}

// FuzzApplyChange feeds change bodies, as a partner sends them, to
// ApplyChange: a body is applied once, refused without a trace, or
// recognised as a duplicate.
func FuzzApplyChange(f *testing.F) {
	n := newFuzzNode(f)
	add := func(b *pb.Body) {
		raw, err := proto.Marshal(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	p := []byte(n.partner)
	doc := func(s string) []byte { return []byte(strings.ReplaceAll(s, "PARTNER", n.partnerStr)) }
	add(&pb.Body{Origin: p, OriginVersion: 1, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: doc(`{"id":"vm1","creator_id":"PARTNER","cpu":2}`)})
	add(&pb.Body{Origin: p, OriginVersion: 2, Kind: pb.Kind_KIND_RESOURCE_UPDATE, DataType: "vm", Payload: doc(`{"id":"vm1","creator_id":"PARTNER","cpu":4}`)})
	add(&pb.Body{Origin: p, OriginVersion: 3, Kind: pb.Kind_KIND_RESOURCE_DELETE, DataType: "vm", Payload: doc(`{"id":7,"creator_id":"PARTNER"}`)})
	add(&pb.Body{Origin: p, OriginVersion: 4, Kind: pb.Kind_KIND_CONSIDERS, DataType: "vm", Payload: []byte(`{"note":"x"}`), To: []byte(n.self)})
	add(&pb.Body{Origin: p, OriginVersion: 5, Kind: pb.Kind_KIND_PLANNER, DataType: "plan", Payload: []byte(`[1,2]`), To: []byte(n.self)})
	add(&pb.Body{Origin: p, OriginVersion: 6, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: doc(`{"id":"vm2","creator_id":"` + n.selfStr + `"}`)})
	add(&pb.Body{Origin: p, OriginVersion: 7, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "a.b", Payload: doc(`{"id":"vm2","creator_id":"PARTNER"}`)})
	add(&pb.Body{Origin: p, OriginVersion: 8, Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: doc(`{"creator_id":"PARTNER"}`)})
	add(&pb.Body{Origin: p, OriginVersion: 9, Kind: pb.Kind_KIND_CONSIDERS, DataType: "vm", Payload: []byte(`{`)})
	add(&pb.Body{Origin: p, OriginVersion: 10, Kind: pb.Kind_KIND_REVIEW_REQUEST, DataType: "t"})
	add(&pb.Body{Origin: p, OriginVersion: 11, Kind: pb.Kind_KIND_RESOURCE_UPDATE, DataType: "vm", Payload: []byte("{\"id\":\"\xff\"}")})
	add(&pb.Body{Origin: []byte("not a peer id"), OriginVersion: 1, Kind: pb.Kind_KIND_CONSIDERS, DataType: "vm", Payload: []byte(`{}`)})
	f.Add([]byte{})
	f.Add([]byte{0x0a})

	f.Fuzz(func(t *testing.T, data []byte) {
		body := &pb.Body{}
		if proto.Unmarshal(data, body) != nil {
			return
		}
		// The receiver only hands over bodies that verified against their
		// origin, which is therefore a peer id.
		if _, err := peer.IDFromBytes(body.Origin); err != nil {
			body.Origin = []byte(n.partner)
			data, _ = proto.Marshal(body)
		}
		env := &pb.Envelope{Body: data, TreeSize: 1, RootSignature: []byte("unchecked here")}
		in, err := stream.InboundOf(env, body, peer.ID(body.Origin))
		if err != nil {
			t.Fatal(err)
		}
		apply := func() (pb.AckStatus, uint64, uint64, error) {
			t.Helper()
			before := n.counter(t, store.CtrVersion)
			var status pb.AckStatus
			err := n.st.Update(context.Background(), func(tx *store.Txn) error {
				var err error
				status, err = n.svc.ApplyChange(tx, in)
				return err
			})
			if err != nil && strings.Contains(err.Error(), "panicked") {
				t.Fatalf("ApplyChange panicked on %v: %v", body, err)
			}
			return status, before, n.counter(t, store.CtrVersion), err
		}
		events, _ := n.pub.state()
		// A resource change older than the row held is logged but not
		// published: apps never go back to an older state.
		stale := false
		if isResource(body.Kind) {
			if id, _, err := checkResource(body.Payload); err == nil {
				rs, _ := n.st.Resources(body.DataType)
				for _, r := range rs {
					if string(r.Creator) == string(body.Origin) && r.Id == id && r.OriginVersion >= body.OriginVersion {
						stale = true
					}
				}
			}
		}
		status, before, after, err := apply()
		var rej *stream.RejectError
		switch {
		case err != nil:
			if !errors.As(err, &rej) {
				t.Fatalf("%v: error %v is not a rejection", body, err)
			}
			if after != before {
				t.Fatalf("%v rejected (%v), but version %d -> %d", body, err, before, after)
			}
			return
		case status == pb.AckStatus_ACK_STATUS_DUPLICATE:
			if after != before {
				t.Fatalf("%v: duplicate moved the version %d -> %d", body, before, after)
			}
			return
		case status != pb.AckStatus_ACK_STATUS_APPLIED:
			t.Fatalf("%v: status %v without an error", body, status)
		}
		if after <= before {
			t.Fatalf("%v applied, but version %d -> %d", body, before, after)
		}
		want := 1
		if stale {
			want = 0
		}
		if got, perr := n.pub.state(); got != events+want || perr != nil {
			t.Fatalf("%v applied: %d events published (want %d), %v", body, got-events, want, perr)
		}
		// Applied once: the same change again is a duplicate.
		status, before, after, err = apply()
		if err != nil || status != pb.AckStatus_ACK_STATUS_DUPLICATE || after != before {
			t.Fatalf("%v applied twice: %v, %v, version %d -> %d", body, status, err, before, after)
		}
	})
}
