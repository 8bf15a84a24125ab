package eventstream_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/internal/leaks"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// Every goroutine the package's tests start is stopped by the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaks.Options()...) }

// renderer gives a change of data type "skip" no event, and any other the
// event considers.<data type> with its payload as the body.
type renderer struct{}

func (renderer) Event(_ uint64, b *pb.Body) (string, []byte, bool, error) {
	if b.DataType == "skip" {
		return "", nil, false, nil
	}
	return "considers." + b.DataType, b.Payload, true, nil
}

var kinds = eventstream.Kinds{pb.Kind_KIND_CONSIDERS: renderer{}}

// rig is a store, an embedded nats-server with JetStream, and the node's id.
type rig struct {
	t    *testing.T
	dir  string
	st   *store.Store
	key  crypto.PrivKey
	self peer.ID
	srv  *server.Server
	nc   *nats.Conn // the test's (an app's) connection
	js   jetstream.JetStream

	configure func(*server.Options)
	yield     func() bool // the publishers' Deps.Yield
}

func newRig(t *testing.T) *rig { return newRigWith(t, nil) }

// newRigWith is newRig with the server's options adjusted.
func newRigWith(t *testing.T, configure func(*server.Options)) *rig {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := peer.IDFromPrivateKey(key)
	r := &rig{t: t, dir: t.TempDir(), key: key, self: self, configure: configure}
	r.openStore()
	r.startServer()
	return r
}

func (r *rig) openStore() {
	st, err := store.Open(filepath.Join(r.dir, "data"), store.Options{Signer: r.key})
	if err != nil {
		r.t.Fatal(err)
	}
	r.st = st
	r.t.Cleanup(func() { _ = st.Close() })
}

func (r *rig) startServer() {
	o := &server.Options{ServerName: "ferry", Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: filepath.Join(r.dir, "data")}
	if r.configure != nil {
		r.configure(o)
	}
	srv, err := server.NewServer(o)
	if err != nil {
		r.t.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		r.t.Fatal("nats-server did not start")
	}
	r.srv = srv
	r.t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if r.nc, err = nats.Connect("", nats.InProcessServer(srv)); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(r.nc.Close)
	if r.js, err = jetstream.New(r.nc); err != nil {
		r.t.Fatal(err)
	}
}

// write commits n changes in one transaction: data types from dt(i).
func (r *rig) write(n int, dt func(i int) string) []uint64 {
	r.t.Helper()
	return r.commit(n, dt, func(i int) string { return fmt.Sprintf(`{"i":%d}`, i) })
}

// writePayloads commits n changes of data type x with payloads from pl(i),
// in one transaction.
func (r *rig) writePayloads(n int, pl func(i int) string) []uint64 {
	r.t.Helper()
	return r.commit(n, all, pl)
}

func (r *rig) commit(n int, dt func(i int) string, pl func(i int) string) []uint64 {
	r.t.Helper()
	var vs []uint64
	if err := r.st.Update(context.Background(), func(tx *store.Txn) error {
		for i := range n {
			v, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(r.self), Kind: pb.Kind_KIND_CONSIDERS, DataType: dt(i),
				Payload: []byte(pl(i)), CreatedAtUnixNano: time.Now().UnixNano()})
			if err != nil {
				return err
			}
			vs = append(vs, v)
		}
		return nil
	}); err != nil {
		r.t.Fatal(err)
	}
	return vs
}

func (r *rig) options() eventstream.Options {
	return eventstream.Options{Stream: "FERRY_EVENTS", Prefix: "ferry", MaxBytes: 64 << 20, MaxAge: time.Hour,
		Batch: 16, AckTimeout: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// publisher starts a Publisher on its own connection; stop closes it.
func (r *rig) publisher(o eventstream.Options) *eventstream.Publisher {
	r.t.Helper()
	p, err := r.newPublisher(o)
	if err != nil {
		r.t.Fatal(err)
	}
	p.Start()
	return p
}

func (r *rig) newPublisher(o eventstream.Options) (*eventstream.Publisher, error) {
	conn, err := nats.Connect("", nats.InProcessServer(r.srv))
	if err != nil {
		r.t.Fatal(err)
	}
	p, err := eventstream.New(eventstream.Deps{Store: r.st, Conn: conn, Kinds: kinds, Self: r.self, Yield: r.yield}, o)
	if err != nil {
		conn.Close()
	}
	return p, err
}

// stored is every message of the stream: subject, Ferry-Version, body.
type msg struct {
	seq     uint64
	subject string
	version uint64
	data    string
}

func (r *rig) stored() []msg {
	r.t.Helper()
	ctx := context.Background()
	st, err := r.js.Stream(ctx, "FERRY_EVENTS")
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []msg
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			r.t.Fatal(err)
		}
		v, _ := strconv.ParseUint(m.Header.Get(eventstream.HeaderVersion), 10, 64)
		out = append(out, msg{seq: seq, subject: m.Subject, version: v, data: string(m.Data)})
	}
	return out
}

// waitStored waits until the publisher's cursor reaches the store's
// durable end.
func waitStored(t *testing.T, r *rig, p *eventstream.Publisher) {
	t.Helper()
	wait.Until(t, 20*time.Second, "the stream holds every event", func() error {
		if h := p.Health(); h.Through < r.st.DurableVersion() {
			return fmt.Errorf("through %d of %d (%+v)", h.Through, r.st.DurableVersion(), h)
		}
		return nil
	})
}

// checkOnce: the stream holds exactly the events of the versions want, in
// order, each once, under the event subject (not the ingest one).
func checkOnce(t *testing.T, got []msg, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("the stream holds %d events, want %d", len(got), len(want))
	}
	for i, m := range got {
		if m.version != want[i] {
			t.Fatalf("event %d (sequence %d) is of version %d, want %d", i, m.seq, m.version, want[i])
		}
		if !strings.HasPrefix(m.subject, "ferry.considers.") {
			t.Fatalf("event %d stored under %q, want ferry.considers.<data type>", i, m.subject)
		}
	}
}

func all(int) string { return "x" }

// TestStoresEveryEventOnceInOrder: changes with events and without, in
// several rounds; the stream holds one message per event, in version
// order, under the event's subject, with its body.
func TestStoresEveryEventOnceInOrder(t *testing.T) {
	r := newRig(t)
	p := r.publisher(r.options())
	defer p.Close()
	var want []uint64
	for round := range 5 {
		vs := r.write(40, func(i int) string {
			if i%3 == 0 {
				return "skip"
			}
			return "t" + strconv.Itoa(round)
		})
		for i, v := range vs {
			if i%3 != 0 {
				want = append(want, v)
			}
		}
	}
	waitStored(t, r, p)
	got := r.stored()
	checkOnce(t, got, want)
	if got[0].data != `{"i":1}` || got[0].subject != "ferry.considers.t0" {
		t.Fatalf("first event: %+v", got[0])
	}
	h := p.Health()
	if !h.OK || h.Stored != uint64(len(want)) || h.LastSeq != uint64(len(want)) || !h.CaughtUp {
		t.Fatalf("health: %+v", h)
	}
	// A core subscriber of the node's events does not see the stream's copies.
	sub, err := r.nc.SubscribeSync("ferry.>")
	if err != nil {
		t.Fatal(err)
	}
	r.write(3, all)
	waitStored(t, r, p)
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("a core subscriber of ferry.> got the stream's copy %s", m.Subject)
	}
}

// TestYieldsWhileTheNodeCatchesUp: while Deps.Yield says the node catches
// up, new events wait (none is stored), for at most MaxYield; then every
// one is stored, once, in order.
func TestYieldsWhileTheNodeCatchesUp(t *testing.T) {
	for _, bounded := range []bool{false, true} {
		r := newRig(t)
		var catching, asked atomic.Bool
		catching.Store(true)
		r.yield = func() bool { asked.Store(true); return catching.Load() }
		o := r.options()
		o.MaxYield = time.Hour
		if bounded {
			o.MaxYield = 300 * time.Millisecond
		}
		p := r.publisher(o)
		want := r.write(40, all)
		// It is asked only when it has events to send.
		wait.For(t, 20*time.Second, "the publisher asked whether to yield", asked.Load)
		if !bounded {
			if got := r.stored(); len(got) != 0 {
				t.Fatalf("the stream stored %d events while the node caught up", len(got))
			}
			catching.Store(false)
		}
		// Unbounded: stored once the node caught up; bounded: after
		// MaxYield while it still does.
		waitStored(t, r, p)
		checkOnce(t, r.stored(), want)
		p.Close()
	}
}

// TestCursorFromTheStreamsLastMessage: what the stream holds decides where a
// publisher resumes, not the cursor the store kept (written lazily, so
// behind after a crash): events the stream stored before a crash are not
// sent again, and those it lacked are.
func TestCursorFromTheStreamsLastMessage(t *testing.T) {
	r := newRig(t)
	o := r.options()
	p := r.publisher(o)
	first := r.write(30, all)
	waitStored(t, r, p)
	p.Close()

	// A crash after the stream stored events the node had not yet heard
	// of: the stream holds two more (as a publisher sends them), the
	// store's cursor does not know them.
	more := r.write(5, all)
	ctx := context.Background()
	for i, v := range more[:2] {
		m := nats.NewMsg(eventstream.IngestRoot + ".ferry.considers.x")
		m.Data = fmt.Appendf(nil, `{"i":%d}`, i)
		m.Header.Set(eventstream.HeaderVersion, strconv.FormatUint(v, 10))
		m.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.Itoa(len(first)+i))
		if _, err := r.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	p = r.publisher(o)
	waitStored(t, r, p)
	checkOnce(t, r.stored(), append(first, more...))
	p.Close()

	// The store and the stream restart too: the cursor survives both.
	r.srv.Shutdown()
	r.srv.WaitForShutdown()
	r.nc.Close()
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	r.openStore()
	r.startServer()
	later := r.write(7, all)
	p = r.publisher(o)
	defer p.Close()
	waitStored(t, r, p)
	checkOnce(t, r.stored(), append(append(first, more...), later...))
}

// TestCursorFromTheStoreWhenTheStreamCannotSay: a purged stream (its last
// message gone) resumes from the store's cursor: nothing purged comes back,
// nothing new is missed. A new publisher on a store that never kept events
// starts at the store's end.
func TestCursorFromTheStoreWhenTheStreamCannotSay(t *testing.T) {
	r := newRig(t)
	old := r.write(10, all) // before the stream existed: not in it
	o := r.options()
	p := r.publisher(o)
	if h := p.Health(); h.Through != old[len(old)-1] {
		t.Fatalf("a first start begins at the store's end %d, not %d", old[len(old)-1], h.Through)
	}
	first := r.write(20, all)
	waitStored(t, r, p)
	p.Close()
	checkOnce(t, r.stored(), first)

	st, err := r.js.Stream(context.Background(), "FERRY_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
	later := r.write(6, all)
	p = r.publisher(o)
	defer p.Close()
	waitStored(t, r, p)
	checkOnce(t, r.stored(), later)
	if h := p.Health(); h.LastSeq != uint64(len(first)+len(later)) {
		t.Fatalf("sequences go on after a purge: last %d, want %d", h.LastSeq, len(first)+len(later))
	}
}

// TestForeignMessagesAreSkipped: a message someone else published on the
// stream's subjects breaks the expected sequence; the publisher learns the
// stream's end again, goes on, and sends nothing twice.
func TestForeignMessagesAreSkipped(t *testing.T) {
	r := newRig(t)
	p := r.publisher(r.options())
	defer p.Close()
	first := r.write(10, all)
	waitStored(t, r, p)
	if _, err := r.js.Publish(context.Background(), eventstream.IngestRoot+".ferry.considers.x", []byte(`{"foreign":true}`)); err != nil {
		t.Fatal(err)
	}
	later := r.write(10, all)
	waitStored(t, r, p)
	var ours []msg
	for _, m := range r.stored() {
		if m.version != 0 {
			ours = append(ours, m)
		}
	}
	checkOnce(t, ours, append(first, later...))
}

// TestRefusesAnotherNodesStream: two nodes given one stream on a shared
// server: the second is refused with an error naming the key.
func TestRefusesAnotherNodesStream(t *testing.T) {
	r := newRig(t)
	p := r.publisher(r.options())
	p.Close()
	other := newRig(t)
	other.srv.Shutdown()
	other.srv.WaitForShutdown()
	other.srv = r.srv
	_, err := other.newPublisher(r.options())
	if err == nil || !strings.Contains(err.Error(), "nats.events.stream") || !strings.Contains(err.Error(), r.self.String()) {
		t.Fatalf("a second node on the stream: %v", err)
	}
}

// silent renders like renderer but declares own changes eventless.
type silent struct{ renderer }

func (silent) NoOwnEvents() bool { return true }

// TestOwnChangesPassedOver: an origin's own changes of a kind whose service
// publishes no event of them move the cursor without a message (and
// without their bodies being read).
func TestOwnChangesPassedOver(t *testing.T) {
	r := newRig(t)
	conn, err := nats.Connect("", nats.InProcessServer(r.srv))
	if err != nil {
		t.Fatal(err)
	}
	p, err := eventstream.New(eventstream.Deps{Store: r.st, Conn: conn, Self: r.self,
		Kinds: eventstream.Kinds{pb.Kind_KIND_CONSIDERS: silent{}}}, r.options())
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	r.write(50, all)
	waitStored(t, r, p)
	if got := r.stored(); len(got) != 0 {
		t.Fatalf("the stream holds %d events of own changes", len(got))
	}
}
