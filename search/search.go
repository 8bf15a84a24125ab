package search

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// tokenRe is what query ids and data types may be: one NATS subject token.
var tokenRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidQueryID reports whether s may be a query id.
func ValidQueryID(s string) bool { return tokenRe.MatchString(s) }

// Request is one search, as an app or an operator asks it.
type Request struct {
	DataType string
	Text     string
	Scope    string // resource searches: all, known or partner
	QueryID  string // "": generated
	Limit    int    // most results per answering peer
	Wait     time.Duration
}

// searchPayload is the payload of a search action on <prefix>.propagate.
type searchPayload struct {
	Search  *string `json:"search"`
	Type    *string `json:"type"`
	QueryID *string `json:"query_id"`
	Limit   *int    `json:"limit"`
	WaitMs  *int    `json:"wait_ms"`
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ferry.ErrBadRequest, fmt.Sprintf(format, args...))
}

// ParseRequest reads the payload of a search action: for data type peer
// {"search"}, else {"type"?, "search"?}; both take "query_id", "limit" and
// "wait_ms". Errors wrap ferry.ErrBadRequest.
func ParseRequest(dataType string, payload json.RawMessage) (Request, error) {
	var p searchPayload
	if err := wording.DecodeJSON(payload, &p, "payload"); err != nil {
		return Request{}, fmt.Errorf("%w (a search payload is {\"search\", \"type\"?, \"query_id\"?, \"limit\"?, \"wait_ms\"?})", err)
	}
	r := Request{DataType: dataType, Limit: DefaultLimit, Wait: DefaultWait}
	if p.Search != nil {
		r.Text = *p.Search
	}
	if p.Type != nil {
		r.Scope = *p.Type
	}
	if p.QueryID != nil {
		if !ValidQueryID(*p.QueryID) {
			return Request{}, badRequest("payload.query_id %q must be 1-64 letters, digits, '_' or '-'", *p.QueryID)
		}
		r.QueryID = *p.QueryID
	}
	if p.Limit != nil {
		if *p.Limit < 1 || *p.Limit > MaxLimit {
			return Request{}, badRequest("payload.limit %d is out of range 1-%d", *p.Limit, MaxLimit)
		}
		r.Limit = *p.Limit
	}
	if p.WaitMs != nil {
		if *p.WaitMs < 1 || *p.WaitMs > int(MaxWait/time.Millisecond) {
			return Request{}, badRequest("payload.wait_ms %d is out of range 1-%d", *p.WaitMs, MaxWait/time.Millisecond)
		}
		r.Wait = time.Duration(*p.WaitMs) * time.Millisecond
	}
	if err := r.check(); err != nil {
		return Request{}, err
	}
	return r, nil
}

// check validates a request and fills the default scope.
func (r *Request) check() error {
	if !tokenRe.MatchString(r.DataType) {
		return badRequest("data_type %q must be 1-64 letters, digits, '_' or '-'", r.DataType)
	}
	if r.QueryID != "" && !ValidQueryID(r.QueryID) {
		return badRequest("query_id %q must be 1-64 letters, digits, '_' or '-'", r.QueryID)
	}
	if r.Limit < 1 || r.Limit > MaxLimit {
		return badRequest("limit %d is out of range 1-%d", r.Limit, MaxLimit)
	}
	if r.Wait <= 0 || r.Wait > MaxWait {
		return badRequest("wait %v is out of range 1ms-%v", r.Wait, MaxWait)
	}
	if len(r.Text) > MaxTextBytes || !utf8.ValidString(r.Text) {
		return badRequest("search text must be valid UTF-8 of at most %d bytes", MaxTextBytes)
	}
	if r.DataType == DataTypePeer {
		r.Text = strings.TrimSpace(r.Text)
		if r.Text == "" {
			return badRequest("a peer search needs payload.search: a name or a peer id")
		}
		return nil
	}
	switch r.Scope {
	case "":
		r.Scope = ScopeAll
	case ScopeAll, ScopeKnown, ScopePartner:
	default:
		return badRequest("payload.type %q must be all, known or partner", r.Scope)
	}
	return nil
}

// Search runs a search action for an app (propagate.Searcher): it opens the
// query and answers at once with its query_id; results are published on
// <prefix>.search.result.<query_id> as they arrive. Pass your own query_id
// to subscribe before asking.
func (s *Service) Search(ctx context.Context, dataType string, payload json.RawMessage) (map[string]any, error) {
	r, err := ParseRequest(dataType, payload)
	if err != nil {
		return nil, err
	}
	q, asked, err := s.start(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"query_id": q.id}
	if r.DataType != DataTypePeer {
		out["scope"] = r.Scope
		out["asked"] = asked
	}
	return out, nil
}

// Event is what the node publishes on <prefix>.search.result.<query_id>:
// the results one peer sent (resource documents), or the peer records a
// peer search found (from is then this node).
type Event struct {
	From     string            `json:"from"`
	DataType string            `json:"data_type"`
	Results  []json.RawMessage `json:"results"`
}

// openQuery is a query this node asked and takes results for.
type openQuery struct {
	id       string
	dataType string
	limit    int
	deadline time.Time
	local    bool             // a peer search: answered here, never by peers
	from     map[peer.ID]bool // peers whose results were taken
	sink     func(Event)      // Collect's, or nil
	done     chan struct{}    // closed when a local query has answered
}

// register opens a query. An app's query id must not be open already.
func (s *Service) register(q *openQuery) error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.g.Closed() {
		return fmt.Errorf("%w: search is not running", ferry.ErrUnavailable)
	}
	for id, o := range s.open {
		if now.After(o.deadline) {
			delete(s.open, id)
		}
	}
	if _, ok := s.open[q.id]; ok {
		return fmt.Errorf("%w: query %s is open already", ferry.ErrConflict, q.id)
	}
	if len(s.open) >= MaxOpenQueries {
		return fmt.Errorf("%w: %d searches are open; try again later", ferry.ErrUnavailable, len(s.open))
	}
	s.open[q.id] = q
	return nil
}

// unregister closes a query (if it is still q).
func (s *Service) unregister(q *openQuery) {
	s.mu.Lock()
	if s.open[q.id] == q {
		delete(s.open, q.id)
	}
	s.mu.Unlock()
}

func newQueryID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// start opens a query and sends it (resource searches) or starts the
// lookup (peer searches). asked is how many peers were asked. r is checked.
func (s *Service) start(ctx context.Context, r Request, sink func(Event)) (q *openQuery, asked int, err error) {
	id := r.QueryID
	if id == "" {
		id = newQueryID()
	}
	q = &openQuery{id: id, dataType: r.DataType, limit: r.Limit, deadline: s.now().Add(r.Wait),
		local: r.DataType == DataTypePeer, from: map[peer.ID]bool{}, sink: sink, done: make(chan struct{})}
	if err := s.register(q); err != nil {
		return nil, 0, err
	}
	if q.local {
		s.m.queries.WithLabelValues("out", "local").Inc()
		if !s.spawn(func() { s.findPeer(q, r.Text) }) {
			s.unregister(q)
			return nil, 0, fmt.Errorf("%w: search is closing", ferry.ErrUnavailable)
		}
		return q, 0, nil
	}
	query := &pb.SearchQuery{QueryId: id, Asker: []byte(s.self), DataType: r.DataType, Text: r.Text,
		Limit: uint32(r.Limit), DeadlineUnixNano: q.deadline.UnixNano()}
	switch r.Scope {
	case ScopeAll:
		asked, err = s.publish(ctx, query)
	case ScopeKnown:
		asked, err = s.sendDirect(query, s.d.Roles.Members())
	case ScopePartner:
		asked, err = s.sendDirect(query, s.d.Roles.Partners())
	}
	if err != nil {
		s.unregister(q)
		return nil, 0, err
	}
	s.m.queries.WithLabelValues("out", r.Scope).Inc()
	s.log.Debug("search sent", "query", id, "data_type", r.DataType, "scope", r.Scope, "asked", asked)
	return q, asked, nil
}

// publish sends a query on the gossipsub topic.
func (s *Service) publish(ctx context.Context, q *pb.SearchQuery) (int, error) {
	s.mu.Lock()
	topic := s.topic
	s.mu.Unlock()
	if topic == nil {
		return 0, fmt.Errorf("%w: search topic is not joined", ferry.ErrUnavailable)
	}
	// A fresh slice every time: gossipsub keeps a reference to it.
	data, err := proto.Marshal(q)
	if err != nil {
		return 0, fmt.Errorf("encode search query: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	if err := topic.Publish(ctx, data); err != nil {
		return 0, fmt.Errorf("%w: publish search query: %w", ferry.ErrUnavailable, err)
	}
	return len(topic.ListPeers()), nil
}

// sendDirect writes a query to each peer of to on its own stream, in the
// background, at most maxDials at once.
func (s *Service) sendDirect(q *pb.SearchQuery, to []peer.ID) (int, error) {
	var targets []peer.ID
	for _, p := range to {
		if p != s.self && p != "" {
			targets = append(targets, p)
		}
	}
	if len(targets) == 0 {
		return 0, nil
	}
	frame := &pb.SearchFrame{Query: q}
	deadline := time.Unix(0, q.DeadlineUnixNano)
	ok := s.spawn(func() {
		for _, p := range targets {
			select {
			case s.dials <- struct{}{}:
			case <-s.ctx.Done():
				return
			}
			if !s.spawn(func() {
				defer func() { <-s.dials }()
				if err := s.send(p, frame, deadline); err != nil && s.ctx.Err() == nil {
					s.log.Debug("search query not sent", "peer", p, "query", q.QueryId, "err", err)
				}
			}) {
				<-s.dials
				return
			}
		}
	})
	if !ok {
		return 0, fmt.Errorf("%w: search is closing", ferry.ErrUnavailable)
	}
	return len(targets), nil
}

// send opens a search stream to p, writes one frame and closes it.
func (s *Service) send(p peer.ID, frame *pb.SearchFrame, deadline time.Time) (err error) {
	deadline = deadline.Add(clockSkew)
	if limit := time.Now().Add(streamTimeout); limit.Before(deadline) {
		deadline = limit
	}
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	st, err := s.d.Host.NewStream(ctx, p, protocols.Search)
	if err != nil {
		return fmt.Errorf("open %s: %w", protocols.Search, err)
	}
	defer func() {
		if err != nil {
			_ = st.Reset()
		}
	}()
	defer context.AfterFunc(s.ctx, func() { _ = st.Reset() })()
	if err := st.Scope().SetService(protocols.ServiceSearch); err != nil {
		return fmt.Errorf("attach stream to %s: %w", protocols.ServiceSearch, err)
	}
	_ = st.SetDeadline(deadline)
	fw := protocols.NewFrameWriter(st, s.max)
	if err := fw.Write(frame); err != nil {
		return err
	}
	if err := fw.Flush(); err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("close stream: %w", err)
	}
	return nil
}

// deliver publishes one event of an open query and hands it to its sink.
func (s *Service) deliver(q *openQuery, ev Event) {
	s.m.results.WithLabelValues("in").Add(float64(len(ev.Results)))
	s.d.Publisher.Publish("search.result."+q.id, ev)
	if q.sink != nil {
		q.sink(ev)
	}
}

// findPeer answers a peer search: the peer book, else the DHT for a peer
// id, within the query's deadline. It publishes one event, empty on a miss.
func (s *Service) findPeer(q *openQuery, text string) {
	defer func() {
		s.unregister(q)
		close(q.done)
	}()
	var recs []PeerRecord
	if s.d.PeerBook != nil {
		recs = s.d.PeerBook.Lookup(text)
	}
	if len(recs) == 0 && s.d.DHT != nil {
		if p, err := peer.Decode(text); err == nil && p != s.self {
			ctx, cancel := context.WithDeadline(s.ctx, q.deadline)
			ai, err := s.d.DHT.FindPeer(ctx, p)
			cancel()
			switch {
			case err == nil && ai.ID == p:
				recs = append(recs, s.record(ai))
			case err != nil && s.ctx.Err() == nil:
				s.log.Debug("peer search: DHT lookup failed", "query", q.id, "peer", p, "err", err)
			}
		}
	}
	if s.ctx.Err() != nil {
		return
	}
	if len(recs) > q.limit {
		recs = recs[:q.limit]
	}
	ev := Event{From: s.self.String(), DataType: DataTypePeer, Results: make([]json.RawMessage, 0, len(recs))}
	for _, r := range recs {
		if r.Addrs == nil {
			r.Addrs = []string{}
		}
		if r.Roles == nil {
			r.Roles = []string{}
		}
		b, err := json.Marshal(r)
		if err != nil {
			continue
		}
		ev.Results = append(ev.Results, b)
	}
	s.deliver(q, ev)
}

// record builds the peer record of a peer the DHT found.
func (s *Service) record(ai peer.AddrInfo) PeerRecord {
	r := PeerRecord{PeerID: ai.ID.String(), Name: s.d.Roles.Name(ai.ID), Addrs: []string{}, Roles: RoleNames(s.d.Roles, ai.ID)}
	for _, a := range ai.Addrs {
		r.Addrs = append(r.Addrs, a.String())
	}
	return r
}

// CollectRequest is a search the admin API runs synchronously (the body of
// POST /api/v1/search).
type CollectRequest struct {
	DataType string `json:"data_type"`
	Search   string `json:"search"`
	Type     string `json:"type"`
	QueryID  string `json:"query_id"`
	Limit    int    `json:"limit"`   // 0: DefaultLimit
	WaitMs   int    `json:"wait_ms"` // 0: DefaultWait
}

// Hit is one result Collect gathered: a resource document (or a peer
// record) and the peer it came from.
type Hit struct {
	From     string          `json:"from"`
	Name     string          `json:"name"`
	DataType string          `json:"data_type"`
	Result   json.RawMessage `json:"result"`
}

// Collection is what Collect gathered.
type Collection struct {
	QueryID string `json:"query_id"`
	Scope   string `json:"scope,omitempty"`
	Asked   int    `json:"asked"`
	Results []Hit  `json:"results"`
}

// Collect runs a search and gathers its results until the wait is over (a
// peer search: until it is answered), or ctx ends. The results are also
// published on NATS, as for an app's search. Errors wrap ferry's sentinels.
func (s *Service) Collect(ctx context.Context, cr CollectRequest) (*Collection, error) {
	r := Request{DataType: cr.DataType, Text: cr.Search, Scope: cr.Type, QueryID: cr.QueryID,
		Limit: cr.Limit, Wait: time.Duration(cr.WaitMs) * time.Millisecond}
	if r.Limit == 0 {
		r.Limit = DefaultLimit
	}
	if cr.WaitMs == 0 {
		r.Wait = DefaultWait
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	closed := false
	hits := []Hit{}
	sink := func(ev Event) {
		from, _ := peer.Decode(ev.From)
		name := s.d.Roles.Name(from)
		mu.Lock()
		defer mu.Unlock()
		for _, res := range ev.Results {
			if closed || len(hits) >= maxCollect {
				return
			}
			hits = append(hits, Hit{From: ev.From, Name: name, DataType: ev.DataType, Result: res})
		}
	}
	q, asked, err := s.start(ctx, r, sink)
	if err != nil {
		return nil, err
	}
	defer s.unregister(q)
	out := &Collection{QueryID: q.id, Asked: asked}
	if r.DataType != DataTypePeer {
		out.Scope = r.Scope
	}
	t := time.NewTimer(r.Wait)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C:
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	mu.Lock()
	closed = true
	out.Results = hits
	mu.Unlock()
	return out, nil
}
