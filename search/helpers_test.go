package search

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/leaks"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leaks.Options()...)
}

func testLogger() *slog.Logger {
	if lvl := os.Getenv("FERRY_TEST_LOG"); lvl != "" {
		var l slog.Level
		_ = l.UnmarshalText([]byte(lvl))
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fakeRoles is a peer book with fixed members and partners.
type fakeRoles struct {
	self    peer.ID
	name    string
	network string

	mu       sync.Mutex
	members  map[peer.ID]bool
	partners map[peer.ID]bool
	names    map[peer.ID]string
}

func (r *fakeRoles) Self() peer.ID     { return r.self }
func (r *fakeRoles) SelfName() string  { return r.name }
func (r *fakeRoles) Network() string   { return r.network }
func (r *fakeRoles) Reviewer() peer.ID { return "" }

func (r *fakeRoles) IsMember(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return p == r.self || r.members[p]
}

func (r *fakeRoles) IsPartner(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.partners[p]
}

func (r *fakeRoles) Members() []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []peer.ID
	for p := range r.members {
		out = append(out, p)
	}
	return out
}

func (r *fakeRoles) Partners() []peer.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []peer.ID
	for p := range r.partners {
		out = append(out, p)
	}
	return out
}

func (r *fakeRoles) Name(p peer.ID) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p == r.self {
		return r.name
	}
	if n, ok := r.names[p]; ok {
		return n
	}
	return "?"
}

func (r *fakeRoles) addMember(p peer.ID, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.members[p] = true
	r.names[p] = name
}

func (r *fakeRoles) addPartner(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partners[p] = true
}

// fakePub records published events by query id.
type fakePub struct {
	mu     sync.Mutex
	events map[string][]Event
	bad    []string
}

func (p *fakePub) Publish(suffix string, v any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ev, ok := v.(Event)
	id, found := strings.CutPrefix(suffix, "search.result.")
	if !ok || !found {
		p.bad = append(p.bad, suffix)
		return
	}
	p.events[id] = append(p.events[id], ev)
}

func (p *fakePub) get(id string) []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events[id]...)
}

func (p *fakePub) total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.bad)
	for _, evs := range p.events {
		n += len(evs)
	}
	return n
}

// fakeBook finds records by exact name (case-insensitive) or peer id.
type fakeBook struct{ recs []PeerRecord }

func (b *fakeBook) Lookup(text string) []PeerRecord {
	var out []PeerRecord
	for _, r := range b.recs {
		if strings.EqualFold(r.Name, text) || r.PeerID == text {
			out = append(out, r)
		}
	}
	return out
}

// fakeDHT knows some peers' addresses.
type fakeDHT struct {
	mu    sync.Mutex
	peers map[peer.ID]peer.AddrInfo
	asked []peer.ID
}

func (d *fakeDHT) FindPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	d.mu.Lock()
	d.asked = append(d.asked, p)
	ai, ok := d.peers[p]
	d.mu.Unlock()
	if !ok {
		return peer.AddrInfo{}, context.DeadlineExceeded
	}
	return ai, nil
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// tnode is one search service on a real host and store.
type tnode struct {
	name  string
	id    peer.ID
	h     host.Host
	st    *store.Store
	roles *fakeRoles
	pub   *fakePub
	book  *fakeBook
	dht   *fakeDHT
	svc   *Service
}

func newHost(t *testing.T) (host.Host, crypto.PrivKey) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h, key
}

// newNode starts a search service; before, if set, runs between New and Start.
func newNode(t *testing.T, name string, before func(*tnode)) *tnode {
	t.Helper()
	h, key := newHost(t)
	st, err := store.Open(t.TempDir(), store.Options{Signer: key, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	n := &tnode{name: name, id: h.ID(), h: h, st: st,
		roles: &fakeRoles{self: h.ID(), name: name, network: "testnet", members: map[peer.ID]bool{},
			partners: map[peer.ID]bool{}, names: map[peer.ID]string{}},
		pub: &fakePub{events: map[string][]Event{}}, book: &fakeBook{}, dht: &fakeDHT{peers: map[peer.ID]peer.AddrInfo{}}}
	n.svc, err = New(Deps{Host: h, DHT: n.dht, Store: st, Roles: n.roles, PeerBook: n.book, Publisher: n.pub,
		Logger: testLogger().With("node", name), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(n)
	}
	if err := n.svc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.svc.Close)
	return n
}

func addrInfo(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

func connect(t *testing.T, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, addrInfo(b)); err != nil {
		t.Fatal(err)
	}
}

// mesh connects every node to every other and makes them members of each other.
func mesh(t *testing.T, nodes ...*tnode) {
	t.Helper()
	for i, a := range nodes {
		for j, b := range nodes {
			if i == j {
				continue
			}
			a.roles.addMember(b.id, b.name)
			if i < j {
				connect(t, a.h, b.h)
			}
		}
	}
}

// waitTopic waits until every node sees every other on the search topic.
func waitTopic(t *testing.T, nodes ...*tnode) {
	t.Helper()
	wait.For(t, 15*time.Second, "every node sees the others on the search topic", func() bool {
		for _, n := range nodes {
			n.svc.mu.Lock()
			topic := n.svc.topic
			n.svc.mu.Unlock()
			seen := map[peer.ID]bool{}
			for _, p := range topic.ListPeers() {
				seen[p] = true
			}
			for _, o := range nodes {
				if o != n && !seen[o.id] {
					return false
				}
			}
		}
		return true
	})
}

// put writes a resource into n's store as the store keeps them: a change
// holding the JSON and a row pointing at it. creator may be another node
// (a partner's resource this node holds).
func (n *tnode) put(t *testing.T, dataType, id string, creator peer.ID, doc string, deleted bool) {
	t.Helper()
	err := n.st.Update(context.Background(), func(tx *store.Txn) error {
		ver, _, err := tx.AppendOwn(&pb.Body{Origin: []byte(n.id), Kind: pb.Kind_KIND_RESOURCE_CREATE, DataType: dataType,
			Payload: []byte(doc), CreatedAtUnixNano: time.Now().UnixNano()})
		if err != nil {
			return err
		}
		tx.PutResource(&storepb.Resource{DataType: dataType, Id: id, Creator: []byte(creator), OriginVersion: ver,
			Version: ver, Deleted: deleted, Json: []byte(doc), UpdatedAt: time.Now().UnixNano()})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// search runs Search and returns its query id.
func (n *tnode) search(t *testing.T, dataType, payload string) map[string]any {
	t.Helper()
	res, err := n.svc.Search(context.Background(), dataType, json.RawMessage(payload))
	if err != nil {
		t.Fatalf("%s: search %s %s: %v", n.name, dataType, payload, err)
	}
	return res
}

// ids lists the "id" field of each result of the events, by sender.
func ids(t *testing.T, evs []Event) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, ev := range evs {
		if out[ev.From] == nil {
			out[ev.From] = []string{}
		}
		for _, r := range ev.Results {
			var doc struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(r, &doc); err != nil {
				t.Fatalf("result %s: %v", r, err)
			}
			out[ev.From] = append(out[ev.From], doc.ID)
		}
	}
	return out
}

// count reads one counter of a vector.
func count(c *prometheus.CounterVec, labels ...string) float64 {
	var m dto.Metric
	_ = c.WithLabelValues(labels...).Write(&m)
	return m.GetCounter().GetValue()
}

// rawStream opens a search stream from h to p, writes data and closes the
// write side; it returns what reading the rest then returns (nil: a clean
// close, else the reset).
func rawStream(t *testing.T, h host.Host, p peer.ID, data []byte) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.NewStream(ctx, p, protocols.Search)
	if err != nil {
		t.Fatalf("open search stream: %v", err)
	}
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Write(data); err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.CloseWrite()
	_, err = io.ReadAll(st)
	if err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.Close()
	return nil
}

// frame encodes m as one varint-delimited frame.
func frame(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return rawFrame(b)
}

func rawFrame(b []byte) []byte {
	out := protoVarint(uint64(len(b)))
	return append(out, b...)
}

func protoVarint(v uint64) []byte {
	var out []byte
	for v >= 0x80 {
		out = append(out, byte(v)|0x80)
		v >>= 7
	}
	return append(out, byte(v))
}

// isReset reports whether err is a stream reset.
func isReset(err error) bool { return errors.Is(err, network.ErrReset) }
