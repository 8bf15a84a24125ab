package catchup

// Catch-up against an in-memory ledger (Pebble on an in-memory file system,
// store.Options{InMemory: true}) and libp2p's in-memory network (mocknet),
// the way stream/stream_test.go tests the delivery streams and
// hashicorp/raft tests against InmemStore and InmemTransport.
//
// The services sync drives are small fakes, not propagate.Service and
// review.Service: they write to the store what the real ones write (the
// change log and origin index through AppendReceived, the decision index
// through PutDecision, the chain mark of an origin, held decisions in aux
// rows, own changes through PutOwnRecovered) and record, after each commit,
// what they applied. That keeps these tests about sync (what is asked, of
// whom, what is served, what is verified and applied once) and lets a test
// read exactly what reached each hook.
//
// Envelopes are sealed with protocols.Seal under the origin's key, as the
// origin's store seals a commit, and loaded into a node's store through the
// same fakes, as a delivery would have left them.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/stream"
)

// ---- roles ----

// roles is one node's view of the network; tests change it as they go.
type roles struct {
	mu       sync.Mutex
	self     peer.ID
	partners []peer.ID
	members  []peer.ID
	reviewer peer.ID
	group    []peer.ID // the review group; nil: the reviewer alone
}

func (r *roles) Self() peer.ID { return r.self }

func (r *roles) IsPartner(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.partners, p)
}

func (r *roles) Partners() []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.partners)
}

func (r *roles) IsMember(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.members, p)
}

func (r *roles) Members() []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.members)
}

func (r *roles) Reviewer() peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reviewer
}

func (r *roles) InReviewGroup(p peer.ID) bool { return p != "" && slices.Contains(r.ReviewGroup(), p) }

func (r *roles) ReviewGroup() []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.group != nil {
		return slices.Clone(r.group)
	}
	if r.reviewer == "" {
		return nil
	}
	return []peer.ID{r.reviewer}
}

// setGroup makes the review group of more than one: reviewer is the one
// this node addresses first (a member's first reviewer, or itself).
func (r *roles) setGroup(group []peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.group = slices.Clone(group)
}

func (r *roles) set(partners, members []peer.ID, reviewer peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partners, r.members, r.reviewer = partners, members, reviewer
}

// ---- Resources ----

// entry is one change a fake applied, in commit order.
type entry struct {
	origin  peer.ID
	version uint64 // origin version (resources, own) or decision sequence
}

// resources is propagate.Service's catch-up side: the chain mark of each
// origin (advanceChain), duplicates by the origin index (stream.CheckHeld),
// a change refused for good that keeps its chain mark (RejectKeeping), and
// the change appended to the log.
type resources struct {
	st     *store.Store
	own    *own // own changes recovered go back through it
	mu     sync.Mutex
	got    []entry
	reject func(v uint64) bool
	keep   bool // reject keeping the chain mark (RejectKeeping), as propagate does
}

func chainCounter(o peer.ID) string { return "test_held/" + string(o) }

func (f *resources) ApplyChange(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	body := in.Body
	held, err := tx.CounterValue(chainCounter(in.Origin))
	if err != nil {
		return 0, err
	}
	if body.PrevVersion <= held && body.OriginVersion > held {
		tx.SetCounter(chainCounter(in.Origin), body.OriginVersion)
	}
	if dup, err := stream.CheckHeld(tx, in.Origin, body.OriginVersion, in.Hash); err != nil || dup {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	refused := f.reject != nil && f.reject(body.OriginVersion)
	if refused && f.keep {
		return 0, stream.RejectKeeping("refused %d", body.OriginVersion)
	}
	if _, err := tx.AppendReceived(body, in.Hash, in.Raw); err != nil {
		return 0, err
	}
	if refused {
		// Refused after writing: sync must roll this change's writes back.
		return 0, stream.Reject("refused %d", body.OriginVersion)
	}
	a := entry{in.Origin, body.OriginVersion}
	tx.OnCommit(func() { f.add(a) })
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

func (f *resources) Held(o peer.ID) (uint64, error) { return f.st.Counter(chainCounter(o)) }

func (f *resources) add(a entry) {
	f.mu.Lock()
	f.got = append(f.got, a)
	f.mu.Unlock()
}

func (f *resources) applied() []entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func (f *resources) reset() {
	f.mu.Lock()
	f.got = nil
	f.mu.Unlock()
}

// ---- Decisions ----

// decisions is review.Service's decision side: decisions apply in sequence
// order, one ahead of a gap is held (an aux row) and applied when the gap
// is filled; Held and Applied read the same counters. Its snapshot side
// serves the chunks a test gives it and records the chunks it applies.
type decisions struct {
	st  *store.Store
	own *own // own changes recovered go back through it

	mu     sync.Mutex
	got    []entry
	chunks []*pb.SnapshotChunk // what ServeSnapshot emits
	snap   []snapChunk         // what ApplySnapshotChunk got, committed
	done   []snapDone          // SnapshotDone calls
}

type snapChunk struct {
	index    uint32
	reviewer peer.ID
}

type snapDone struct {
	reviewer peer.ID
	err      error
}

const (
	ctrApplied = "test_applied"
	ctrHeldMax = "test_held_max"
)

func auxHeld(seq uint64) string { return fmt.Sprintf("test_held/%020d", seq) }

func (f *decisions) ApplyDecision(tx *store.Txn, in *stream.Inbound) (pb.AckStatus, error) {
	d := &pb.ReviewDecision{}
	if err := proto.Unmarshal(in.Body.Payload, d); err != nil {
		return 0, stream.Reject("decision payload: %v", err)
	}
	if dup, err := stream.CheckHeld(tx, in.Origin, in.Body.OriginVersion, in.Hash); err != nil || dup {
		return pb.AckStatus_ACK_STATUS_DUPLICATE, err
	}
	applied, err := tx.CounterValue(ctrApplied)
	if err != nil {
		return 0, err
	}
	switch {
	case d.Sequence == 0:
		return 0, stream.Reject("an applied decision needs a sequence")
	case d.Sequence <= applied:
		return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
	case d.Sequence > applied+1:
		if v, err := tx.GetAux(auxHeld(d.Sequence)); err == nil && len(v) > 0 {
			return pb.AckStatus_ACK_STATUS_DUPLICATE, nil
		}
		tx.SetAux(auxHeld(d.Sequence), in.Raw)
		if m, err := tx.CounterValue(ctrHeldMax); err != nil {
			return 0, err
		} else if d.Sequence > m {
			tx.SetCounter(ctrHeldMax, d.Sequence)
		}
		return pb.AckStatus_ACK_STATUS_APPLIED, nil
	}
	if err := f.inOrder(tx, in, d.Sequence); err != nil {
		return 0, err
	}
	m, err := tx.CounterValue(ctrHeldMax)
	if err != nil {
		return 0, err
	}
	for next := d.Sequence + 1; next <= m; next++ {
		raw, err := tx.GetAux(auxHeld(next))
		if errors.Is(err, store.ErrNotFound) || (err == nil && len(raw) == 0) {
			break
		}
		if err != nil {
			return 0, err
		}
		env := &pb.Envelope{}
		body := &pb.Body{}
		if err := proto.Unmarshal(raw, env); err != nil {
			return 0, err
		}
		if err := proto.Unmarshal(env.Body, body); err != nil {
			return 0, err
		}
		tx.DeleteAux(auxHeld(next))
		hin := &stream.Inbound{Origin: peer.ID(body.Origin), Body: body, Raw: raw, Hash: store.BodyHash(env.Body)}
		if err := f.inOrder(tx, hin, next); err != nil {
			return 0, err
		}
	}
	return pb.AckStatus_ACK_STATUS_APPLIED, nil
}

func (f *decisions) inOrder(tx *store.Txn, in *stream.Inbound, seq uint64) error {
	ver, err := tx.AppendReceived(in.Body, in.Hash, in.Raw)
	if err != nil {
		return err
	}
	tx.PutDecision(seq, ver, in.Hash)
	tx.SetCounter(ctrApplied, seq)
	a := entry{in.Origin, seq}
	tx.OnCommit(func() {
		f.mu.Lock()
		f.got = append(f.got, a)
		f.mu.Unlock()
	})
	return nil
}

func (f *decisions) Applied() uint64 {
	v, _ := f.st.Counter(ctrApplied)
	return v
}

func (f *decisions) Held() bool {
	m, _ := f.st.Counter(ctrHeldMax)
	return m > f.Applied()
}

func (f *decisions) ServeSnapshot(ctx context.Context, emit func(*pb.SnapshotChunk) error) error {
	f.mu.Lock()
	chunks := slices.Clone(f.chunks)
	f.mu.Unlock()
	for _, c := range chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := emit(c); err != nil {
			return err
		}
	}
	return nil
}

func (f *decisions) ApplySnapshotChunk(tx *store.Txn, c *pb.SnapshotChunk, reviewer peer.ID) error {
	for _, r := range c.Rows {
		tx.PutRow(r.Table, r.Id, r.Json)
	}
	if c.Last {
		tx.SetCounter(ctrApplied, c.Sequence)
	}
	sc := snapChunk{c.Index, reviewer}
	tx.OnCommit(func() {
		f.mu.Lock()
		f.snap = append(f.snap, sc)
		f.mu.Unlock()
	})
	return nil
}

func (f *decisions) SnapshotDone(reviewer peer.ID, err error) {
	f.mu.Lock()
	f.done = append(f.done, snapDone{reviewer, err})
	f.mu.Unlock()
}

func (f *decisions) applied() []entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func (f *decisions) reset() {
	f.mu.Lock()
	f.got = nil
	f.mu.Unlock()
}

func (f *decisions) snapshotApplied() []snapChunk {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.snap)
}

func (f *decisions) snapshotDone() []snapDone {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.done)
}

// ---- Own ----

// own puts back this node's changes at their versions
// (Txn.PutOwnRecovered, as propagate and review do) and records the ones
// that were missing, and every end of a recovery.
type own struct {
	mu        sync.Mutex
	from      uint64
	got       []entry
	recovered []recovery
}

type recovery struct {
	peer peer.ID
	n    int
	err  error
}

func (f *own) RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error) {
	ok, err := tx.PutOwnRecovered(in.Body, in.Hash, in.Raw)
	if err != nil || !ok {
		return ok, err
	}
	a := entry{in.Origin, in.Body.OriginVersion}
	tx.OnCommit(func() {
		f.mu.Lock()
		f.got = append(f.got, a)
		f.mu.Unlock()
	})
	return true, nil
}

func (f *resources) RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error) {
	return f.own.RecoverOwn(tx, in)
}

func (f *decisions) RecoverOwn(tx *store.Txn, in *stream.Inbound) (bool, error) {
	return f.own.RecoverOwn(tx, in)
}

func (f *own) RecoverFrom() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.from
}

func (f *own) Recovered(p peer.ID, n int, err error) {
	f.mu.Lock()
	f.recovered = append(f.recovered, recovery{p, n, err})
	f.mu.Unlock()
}

func (f *own) applied() []entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func (f *own) recoveries() []recovery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.recovered)
}

// ---- logs ----

// logs records what a node logs, to read what a job or a handler reported.
type logs struct {
	mu   sync.Mutex
	recs []logRec
}

type logRec struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

type logHandler struct {
	l     *logs
	attrs []slog.Attr
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRec{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.l.mu.Lock()
	h.l.recs = append(h.l.recs, rec)
	h.l.mu.Unlock()
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{h.l, append(slices.Clip(h.attrs), as...)}
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

// find returns the records with message msg whose attribute key contains
// part.
func (l *logs) find(msg, key, part string) []logRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logRec
	for _, r := range l.recs {
		if r.msg == msg && strings.Contains(r.attrs[key], part) {
			out = append(out, r)
		}
	}
	return out
}

func (l *logs) count(msg string) int { return len(l.find(msg, "", "")) }

// ---- nodes ----

// node is one Ferry node as sync sees it: a mocknet host, an in-memory
// store, its roles and the fakes, and the sync service (not started).
type node struct {
	t     *testing.T
	key   crypto.PrivKey
	id    peer.ID
	host  host.Host
	st    *store.Store
	roles *roles
	res   *resources
	dec   *decisions
	own   *own
	logs  *logs
	svc   *Service
}

type testNet struct {
	t  *testing.T
	mn mocknet.Mocknet
	n  int
}

// newNetwork is a mocknet whose hosts are all linked and none connected.
func newNetwork(t *testing.T) *testNet {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { _ = mn.Close() })
	return &testNet{t: t, mn: mn}
}

// node adds a node; its service is built with opts applied to its deps.
func (x *testNet) node(opts ...func(*Deps)) *node {
	t := x.t
	t.Helper()
	x.n++
	key := newKey(t)
	id, _ := peer.IDFromPrivateKey(key)
	h, err := x.mn.AddPeer(key, ma.StringCast(fmt.Sprintf("/ip4/10.0.0.%d/tcp/%d", x.n, 20000+x.n)))
	if err != nil {
		t.Fatal(err)
	}
	if err := x.mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open("mem", store.Options{Signer: key, InMemory: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	o := &own{}
	n := &node{t: t, key: key, id: id, host: h, st: st, roles: &roles{self: id},
		res: &resources{st: st, own: o}, dec: &decisions{st: st, own: o}, own: o, logs: &logs{}}
	d := Deps{Host: h, Store: st, Verifier: protocols.NewVerifier(), Signer: key, Roles: n.roles,
		Resources: n.res, Decisions: n.dec, Own: n.own, Logger: slog.New(logHandler{l: n.logs})}
	for _, opt := range opts {
		opt(&d)
	}
	if n.svc, err = New(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.svc.Close)
	return n
}

// connect opens a connection between a and b (linked already).
func (x *testNet) connect(a, b *node) {
	x.t.Helper()
	if _, err := x.mn.ConnectPeers(a.id, b.id); err != nil {
		x.t.Fatal(err)
	}
}

func (n *node) start() { n.svc.Start() }

// hold loads envelopes into the node's store as deliveries would have,
// without verifying them (a test may plant a forged one): resource changes
// through the resources fake, decisions through the decisions fake, other
// kinds appended to the log; then it forgets what the fakes recorded.
func (n *node) hold(envs ...*pb.Envelope) {
	n.t.Helper()
	err := n.st.Update(context.Background(), func(tx *store.Txn) error {
		for _, env := range envs {
			body := &pb.Body{}
			if err := proto.Unmarshal(env.Body, body); err != nil {
				return err
			}
			in, err := stream.InboundOf(env, body, peer.ID(body.Origin))
			if err != nil {
				return err
			}
			switch {
			case isResource(body.Kind):
				_, err = n.res.ApplyChange(tx, in)
			case body.Kind == pb.Kind_KIND_REVIEW_DECISION:
				_, err = n.dec.ApplyDecision(tx, in)
			default:
				_, err = tx.AppendReceived(body, in.Hash, in.Raw)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
	n.res.reset()
	n.dec.reset()
}

// outcome reads the sync changes counter of what and outcome.
func (n *node) outcome(what, outcome string) int {
	m := &dto.Metric{}
	if err := n.svc.applied.WithLabelValues(what, outcome).Write(m); err != nil {
		n.t.Fatal(err)
	}
	return int(m.GetCounter().GetValue())
}

// failures reads the failed jobs counter of what.
func (n *node) failures(what string) int {
	m := &dto.Metric{}
	if err := n.svc.failed.WithLabelValues(what).Write(m); err != nil {
		n.t.Fatal(err)
	}
	return int(m.GetCounter().GetValue())
}

// wants lists the jobs asked for and not yet taken by the worker.
func (n *node) wants() map[job][]peer.ID {
	n.svc.jobs.mu.Lock()
	defer n.svc.jobs.mu.Unlock()
	out := map[job][]peer.ID{}
	for j, h := range n.svc.jobs.want {
		out[j] = slices.Clone(h)
	}
	return out
}

// describe prints jobs and their hints readably.
func describe(jobs map[job][]peer.ID) string {
	var out []string
	for j, hints := range jobs {
		s := whatName(j.what)
		if j.origin != "" {
			s += " of " + j.origin.String()
		}
		out = append(out, fmt.Sprintf("%s (hints %v)", s, hints))
	}
	slices.Sort(out)
	return "[" + strings.Join(out, ", ") + "]"
}

// ---- origins ----

// origin signs changes as a node does when it commits them: origin
// versions increase, each resource change names the previous one
// (prev_version), and one commit is one signed tree.
type origin struct {
	t    *testing.T
	key  crypto.PrivKey
	id   peer.ID
	ver  uint64
	head uint64 // the last resource change
}

func newKey(t *testing.T) crypto.PrivKey {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newOrigin(t *testing.T) *origin {
	key := newKey(t)
	id, _ := peer.IDFromPrivateKey(key)
	return &origin{t: t, key: key, id: id, ver: 1_000_000}
}

// as signs with a node's key (its own changes).
func (n *node) as() *origin {
	return &origin{t: n.t, key: n.key, id: n.id, ver: 1_000_000}
}

// resources seals count resource changes with payloads of about size
// bytes, in one commit.
func (o *origin) resources(count, size int) []*pb.Envelope {
	o.t.Helper()
	bodies := make([][]byte, 0, count)
	for i := 0; i < count; i++ {
		o.ver += 3 // other kinds of changes come in between
		payload := fmt.Sprintf(`{"id":"r%d","pad":"%s"}`, o.ver, strings.Repeat("x", max(size-32, 0)))
		bodies = append(bodies, o.body(&pb.Body{Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: "vm", Payload: []byte(payload),
			PrevVersion: o.head}))
		o.head = o.ver
	}
	return o.seal(bodies)
}

// decisions seals reviewer decisions with these sequences, in one commit.
func (o *origin) decisions(seqs ...uint64) []*pb.Envelope {
	o.t.Helper()
	bodies := make([][]byte, 0, len(seqs))
	for _, seq := range seqs {
		o.ver++
		d, err := proto.Marshal(&pb.ReviewDecision{Origin: fmt.Sprintf("app/%d", seq), Sequence: seq, Status: "accepted",
			Request: &pb.ReviewRequest{Type: "insert", TableName: "sites", TableId: seq}, Data: []byte(`{"n":1}`)})
		if err != nil {
			o.t.Fatal(err)
		}
		bodies = append(bodies, o.body(&pb.Body{Kind: pb.Kind_KIND_REVIEW_DECISION, DataType: "sites", Payload: d}))
	}
	return o.seal(bodies)
}

// other seals one change of a kind that is not a resource change,
// addressed to to.
func (o *origin) other(kind pb.Kind, to peer.ID) *pb.Envelope {
	return o.one(&pb.Body{Kind: kind, DataType: "sites", Payload: []byte(`{}`), To: []byte(to)})
}

// one seals one body as the origin's next change.
func (o *origin) one(b *pb.Body) *pb.Envelope {
	o.ver++
	return o.seal([][]byte{o.body(b)})[0]
}

func (o *origin) body(b *pb.Body) []byte {
	b.Origin = []byte(o.id)
	b.OriginVersion = o.ver
	b.CreatedAtUnixNano = time.Now().UnixNano()
	raw, err := proto.Marshal(b)
	if err != nil {
		o.t.Fatal(err)
	}
	return raw
}

func (o *origin) seal(bodies [][]byte) []*pb.Envelope {
	envs, err := protocols.Seal(o.key, bodies)
	if err != nil {
		o.t.Fatal(err)
	}
	return envs
}

// versions lists the origin versions of envelopes.
func versions(t *testing.T, envs []*pb.Envelope) []uint64 {
	t.Helper()
	out := make([]uint64, 0, len(envs))
	for _, env := range envs {
		b := &pb.Body{}
		if err := proto.Unmarshal(env.Body, b); err != nil {
			t.Fatal(err)
		}
		out = append(out, b.OriginVersion)
	}
	return out
}

func versionsOf(as []entry) []uint64 {
	out := make([]uint64, 0, len(as))
	for _, a := range as {
		out = append(out, a.version)
	}
	return out
}

// ---- the wire ----

// request sends one SyncRequest from h to `to` by hand and reads the
// answer: every batch up to the one marked done, then the end of the
// stream (a clean close: a reset is an error).
func request(t *testing.T, h host.Host, to peer.ID, req *pb.SyncRequest) ([]*pb.SyncBatch, error) {
	t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return requestRaw(t, h, to, b)
}

func requestRaw(t *testing.T, h host.Host, to peer.ID, frame []byte) ([]*pb.SyncBatch, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.NewStream(ctx, to, protocols.Sync)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	defer st.Close()
	fw := protocols.NewFrameWriter(st, 64<<10)
	if err := fw.WriteRaw(frame); err != nil {
		return nil, err
	}
	if err := fw.Flush(); err != nil {
		return nil, err
	}
	_ = st.CloseWrite()
	fr := protocols.NewFrameReader(st, MaxBatchBytes+protocols.DefaultMaxMessageBytes+2*protocols.FrameOverhead)
	var out []*pb.SyncBatch
	for {
		batch := &pb.SyncBatch{}
		if err := fr.Read(batch); err != nil {
			return out, fmt.Errorf("answer ended without done: %w", err)
		}
		out = append(out, batch)
		if batch.Done {
			break
		}
	}
	if _, err := fr.Next(); !errors.Is(err, io.EOF) {
		return out, fmt.Errorf("after the done batch: %v, want a clean end of stream", err)
	}
	return out, nil
}

// byHand answers every sync request on h with the same batches, written
// as they are, then closes the stream; it records the requests.
type byHand struct {
	mu   sync.Mutex
	reqs []*pb.SyncRequest
}

func answerByHand(t *testing.T, h host.Host, raw []byte, batches ...*pb.SyncBatch) *byHand {
	t.Helper()
	x := &byHand{}
	h.SetStreamHandler(protocols.Sync, func(st network.Stream) {
		req := &pb.SyncRequest{}
		if err := protocols.NewFrameReader(st, maxRequestBytes).Read(req); err != nil {
			_ = st.Reset()
			return
		}
		x.mu.Lock()
		x.reqs = append(x.reqs, req)
		x.mu.Unlock()
		fw := protocols.NewFrameWriter(st, 64<<20)
		for _, b := range batches {
			if err := fw.Write(b); err != nil {
				_ = st.Reset()
				return
			}
		}
		if raw != nil {
			_ = fw.WriteRaw(raw)
		}
		_ = fw.Flush()
		_ = st.Close()
	})
	t.Cleanup(func() { h.RemoveStreamHandler(protocols.Sync) })
	return x
}

func (x *byHand) requests() []*pb.SyncRequest {
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Clone(x.reqs)
}

// ---- waiting ----

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// waitTimeout bounds every wait of these tests.
const waitTimeout = 20 * time.Second
