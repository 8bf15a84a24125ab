// Package propagate is the owned-resource flow of source 002: an app asks
// its node to create, update or delete a resource it owns, or to send a
// considers or planner event; the node commits the change to its log with
// one delivery record (broadcast to its partners, or addressed to the
// listed ones) and the stream layer carries it to each receiver after that
// receiver's ack floor. On the receiving side it
// checks that the sender is a partner and the origin, applies the change
// once, and publishes it on the local NATS.
//
// A node never propagates again what it received. The service holds no
// network state; the stream layer owns streams and retries.
package propagate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// Actions an app may ask for on <prefix>.propagate.
const (
	ActionCreate       = "create"
	ActionUpdate       = "update"
	ActionDelete       = "delete"
	ActionConsiders    = "considers"
	ActionPlanner      = "planner"
	ActionClosePlanner = "close_planner"
	ActionSearch       = "search"
)

// ValidDataType reports whether s may be a data type: it is a NATS subject token.
func ValidDataType(s string) bool { return ferry.ValidName(s) }

// Roles is what the service needs to know of the network.
type Roles interface {
	Self() peer.ID
	IsPartner(peer.ID) bool
	Partners() []peer.ID
	Name(peer.ID) string
}

// Streams closes an open delivery stream (the stream sender): an operator
// closing a partner's planner stream. The sender hears of new changes from
// the log (store.Follow), not from this service.
type Streams interface {
	CloseStream(peer.ID, protocol.ID) bool
}

// Publisher publishes events on the local NATS under the node's prefix.
type Publisher interface {
	Publish(suffix string, v any)
	PublishRaw(suffix string, data []byte)
}

// EventTail keeps the events published for the newest changes, by local
// version, for the events stream (eventstream.Tail): it then need not read
// them back from the change log.
type EventTail interface {
	Add(ver uint64, suffix string, data []byte)
}

// Gate holds this node's own writes back while it cannot know how far its
// store got (internal/gate): run is called when they may go ahead, fail
// with the reason when they waited too long.
type Gate interface {
	Do(run func(), fail func(error))
}

// Tracer hears of each change this service commits for an app (action,
// this node's version, what it is: data type and resource id), for
// operators (`ferry watch`) and nothing else. Receivers of a change apply
// it through the inbound paths, which have their own (stream.Tracer).
type Tracer interface {
	Committed(action string, version uint64, detail string)
}

// Searcher runs search actions (the search service).
type Searcher interface {
	Search(ctx context.Context, dataType string, payload json.RawMessage) (map[string]any, error)
}

// Request is the body of <prefix>.propagate.
type Request struct {
	Action   string          `json:"action"`
	DataType string          `json:"data_type"`
	Payload  json.RawMessage `json:"payload"`
	// IdempotencyKey makes a retry get the first answer (request.go).
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	idem           *idem.Request
	// scan is set by DecodeRequest: the payload is valid JSON nested at
	// most ferry.MaxJSONDepth deep, with what the scan found in it.
	scan *scanned
}

// Result is what a propagate request answers besides ok.
type Result map[string]any

// Service runs the flow.
type Service struct {
	st       *store.Store
	roles    Roles
	streams  Streams
	holds    *PlannerHolds
	tracer   Tracer
	pub      Publisher
	tail     EventTail
	search   Searcher
	gate     Gate
	maxBytes int
	log      *slog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	g        lifecycle.Group // close_planner work in progress

	known *known   // own resources, for creates that need no read
	ids   sync.Map // peer.ID -> its text form
	// quiet: some received resource change was kept without an event
	// (event.go); until then the events stream reads no marks.
	quiet atomic.Bool
	recv  receiverCache
}

// Deps are what New needs.
type Deps struct {
	Store *store.Store
	Roles Roles
	// Streams closes planner streams (close_planner); nil: none is open.
	Streams Streams
	// Holds are the planner streams operators closed, shared with the
	// sender (its SenderOptions.Hold); nil: New loads them.
	Holds     *PlannerHolds
	Publisher Publisher
	// Events, if set, is given each event a received change published
	// (the events stream's tail in memory: eventstream.Tail).
	Events EventTail
	// Searcher runs search actions; nil: search is not running.
	Searcher Searcher
	// Tracer, if set, hears of each change committed for an app.
	Tracer Tracer
	// Gate, if set, holds creates, updates, deletes, considers and planner
	// events until this node's store is confirmed by a partner.
	Gate            Gate
	MaxMessageBytes int
	Logger          *slog.Logger
}

const auxPlannerClosed = "planner_closed/"

// Counters the service keeps in the store. Own resource changes form a
// chain: each names the previous one (Body.prev_version), so a receiver
// knows exactly when it holds every change of an origin up to a version.
const (
	CtrResourceHead = "resource_head"  // this node's last own resource change
	ctrChainPrefix  = "resource_held/" // + origin: every change of origin up to this version is held
)

// ChainCounter names the counter of how far an origin's chain is held.
func ChainCounter(origin peer.ID) string { return originNames(origin).chain }

// originCounters are the names of an origin's counters, made once per
// origin (every received change reads and writes them).
type originCounters struct{ chain, synced string }

var originCounterNames = struct {
	sync.RWMutex
	m map[peer.ID]originCounters
}{m: map[peer.ID]originCounters{}}

func originNames(o peer.ID) originCounters {
	originCounterNames.RLock()
	n, ok := originCounterNames.m[o]
	originCounterNames.RUnlock()
	if !ok {
		n = originCounters{chain: ctrChainPrefix + string(o), synced: ctrSynced + string(o)}
		originCounterNames.Lock()
		originCounterNames.m[o] = n
		originCounterNames.Unlock()
	}
	return n
}

// New builds the service and loads which planner streams operators closed.
func New(d Deps) (*Service, error) {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.MaxMessageBytes == 0 {
		d.MaxMessageBytes = protocols.DefaultMaxMessageBytes
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{st: d.Store, roles: d.Roles, streams: d.Streams, holds: d.Holds, tracer: d.Tracer, pub: d.Publisher, tail: d.Events, search: d.Searcher, gate: d.Gate,
		maxBytes: d.MaxMessageBytes, log: d.Logger, ctx: ctx, cancel: cancel}
	var err error
	if s.holds == nil {
		if s.holds, err = LoadPlannerHolds(d.Store); err != nil {
			cancel()
			return nil, err
		}
	}
	if err := s.loadQuiet(); err != nil {
		cancel()
		return nil, err
	}
	if s.known, err = loadKnown(d.Store); errors.Is(err, ferry.ErrCorrupt) {
		// The store says so (health, ERROR line) and is rebuilt at the next
		// start; until then every create looks its row up.
		s.log.Warn("own resources could not all be read: every create looks up its row until the store is rebuilt", "err", err.Error())
		s.known = newKnown(0)
		s.known.all = true
	} else if err != nil {
		cancel()
		return nil, fmt.Errorf("load own resources: %w", err)
	}
	return s, nil
}

// PlannerHolds are the partners whose planner stream an operator closed
// (close_planner): the sender holds their planner lane (Hold) until a new
// planner event to them reopens it. Built before the sender and this
// service, and shared by both.
type PlannerHolds struct {
	mu     sync.Mutex
	closed map[peer.ID]bool
}

// LoadPlannerHolds reads which planner streams operators closed.
func LoadPlannerHolds(st *store.Store) (*PlannerHolds, error) {
	closed, err := st.AuxPrefix(auxPlannerClosed)
	if err != nil {
		return nil, fmt.Errorf("load closed planner streams: %w", err)
	}
	h := &PlannerHolds{closed: map[peer.ID]bool{}}
	for name, v := range closed {
		if len(v) == 1 && v[0] == 1 {
			h.closed[peer.ID(strings.TrimPrefix(name, auxPlannerClosed))] = true
		}
	}
	return h, nil
}

// Hold keeps planner deliveries to a peer pending while its planner stream
// is closed (stream.SenderOptions.Hold).
func (h *PlannerHolds) Hold(p peer.ID, lane stream.Lane) bool {
	if lane != stream.LanePlanner {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed[p]
}

func (h *PlannerHolds) set(p peer.ID, closed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if closed {
		h.closed[p] = true
	} else {
		delete(h.closed, p)
	}
}

// Close waits for close_planner work in progress; a close_planner that
// arrives once Close has begun is refused (ErrUnavailable).
func (s *Service) Close() {
	s.g.Shut()
	s.cancel()
	s.g.Close()
}

// Hold keeps planner deliveries to a peer pending while its planner stream
// is closed.
func (s *Service) Hold(p peer.ID, lane stream.Lane) bool { return s.holds.Hold(p, lane) }

// traced tells the tracer of a change committed for req before done.
func (s *Service) traced(req Request, done func(Result, error)) func(Result, error) {
	return func(res Result, err error) {
		if v, _ := res["version"].(uint64); err == nil && v != 0 {
			detail := req.DataType
			if id, ok := res["id"].(string); ok && (req.Action == ActionCreate || req.Action == ActionUpdate || req.Action == ActionDelete) {
				detail += " " + id
			}
			s.tracer.Committed(req.Action, v, detail)
		}
		done(res, err)
	}
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ferry.ErrBadRequest, fmt.Sprintf(format, args...))
}

// Propagate serves one request; done is called once, after the change and
// its deliveries are on disk (or with the reason nothing was written).
func (s *Service) Propagate(ctx context.Context, req Request, done func(Result, error)) {
	if s.tracer != nil {
		done = s.traced(req, done)
	}
	if req.Action == "" {
		done(nil, fmt.Errorf("%w: action is missing", ferry.ErrUnknownAction))
		return
	}
	switch req.Action {
	case ActionCreate, ActionUpdate, ActionDelete, ActionConsiders, ActionPlanner, ActionClosePlanner, ActionSearch:
	default:
		done(nil, fmt.Errorf("%w: %q (want create, update, delete, considers, planner, close_planner or search)", ferry.ErrUnknownAction, req.Action))
		return
	}
	if len(req.Payload) > s.maxBytes {
		done(nil, fmt.Errorf("%w: payload is %d bytes, the limit is %d", ferry.ErrTooLarge, len(req.Payload), s.maxBytes))
		return
	}
	if err := req.admit(); err != nil {
		done(nil, err)
		return
	}
	if req.Action != ActionClosePlanner && !ValidDataType(req.DataType) {
		if req.DataType == "" {
			done(nil, badRequest("data_type is missing"))
		} else {
			done(nil, badRequest("data_type %q must be 1-64 letters, digits, '_' or '-'", req.DataType))
		}
		return
	}
	if req.Action == ActionCreate || req.Action == ActionUpdate || req.Action == ActionDelete {
		s.own(func() { s.resource(ctx, req, done) }, done)
		return
	}
	obj, err := jsonObject(req.Payload)
	if err != nil {
		done(nil, err)
		return
	}
	switch req.Action {
	case ActionConsiders:
		s.own(func() { s.considers(ctx, req, obj, done) }, done)
	case ActionPlanner:
		s.own(func() { s.planner(ctx, req, obj, done) }, done)
	case ActionClosePlanner:
		s.closePlanner(obj, done)
	case ActionSearch:
		if s.search == nil {
			done(nil, fmt.Errorf("%w: search is not running", ferry.ErrUnavailable))
			return
		}
		res, err := s.search.Search(ctx, req.DataType, req.Payload)
		done(res, err)
	}
}

// own runs a write of this node's own log through the gate, if any.
func (s *Service) own(run func(), done func(Result, error)) {
	if s.gate == nil {
		run()
		return
	}
	s.gate.Do(run, func(err error) {
		if !errors.Is(err, ferry.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
		}
		done(nil, err)
	})
}

func jsonObject(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, badRequest("payload is missing")
	}
	if !utf8.Valid(raw) {
		return nil, badRequest("payload is not valid UTF-8")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, badRequest("payload is not a JSON object")
	}
	return obj, nil
}

func kindOf(action string) (pb.Kind, protocol.ID) {
	switch action {
	case ActionCreate:
		return pb.Kind_KIND_RESOURCE_CREATE, protocols.ResourceCreate
	case ActionUpdate:
		return pb.Kind_KIND_RESOURCE_UPDATE, protocols.ResourceUpdate
	case ActionDelete:
		return pb.Kind_KIND_RESOURCE_DELETE, protocols.ResourceDelete
	case ActionConsiders:
		return pb.Kind_KIND_CONSIDERS, protocols.ResourceConsider
	}
	return pb.Kind_KIND_PLANNER, protocols.Planner
}

// checkResource reads a resource document's id and creator_id. The
// document is scanned, not decoded (see jsonscan.go).
func checkResource(doc []byte) (id string, creator []byte, err error) {
	if len(bytes.TrimSpace(doc)) == 0 {
		return "", nil, badRequest("payload is missing")
	}
	if !utf8.Valid(doc) {
		return "", nil, badRequest("payload is not valid UTF-8")
	}
	// One pass for the common shape; topLevel for the rest.
	sc := scan{b: doc}
	sc.space()
	if sc.i < len(doc) && doc[sc.i] == '{' {
		var info scanned
		if sc.object(1, &info) && info.object {
			if sc.space(); sc.i == len(doc) {
				return resourceID(info.id, info.creator)
			}
		}
	}
	vals, ok := topLevel(doc, "id", "creator_id")
	if !ok {
		return "", nil, badRequest("payload is not a JSON object")
	}
	return resourceID(vals[0], vals[1])
}

// checkScanned is checkResource for a payload DecodeRequest already scanned.
func checkScanned(req Request) (id string, creator []byte, err error) {
	if req.scan == nil || !req.scan.object {
		return checkResource(req.Payload)
	}
	return resourceID(req.scan.id, req.scan.creator)
}

func resourceID(rawID, creator []byte) (id string, _ []byte, err error) {
	if rawID == nil {
		return "", nil, badRequest("payload.id is missing")
	}
	id, ok := idText(rawID)
	if !ok {
		return "", nil, badRequest("payload.id must be a non-empty string or a number")
	}
	if len(id) > store.MaxNameBytes || !utf8.ValidString(id) {
		return "", nil, badRequest("payload.id must be 1-%d bytes of UTF-8", store.MaxNameBytes)
	}
	return id, creator, nil
}

func (s *Service) resource(ctx context.Context, req Request, done func(Result, error)) {
	id, creatorRaw, err := checkScanned(req)
	if err != nil {
		done(nil, err)
		return
	}
	self := s.roles.Self()
	selfText := s.idString(self)
	doc := []byte(req.Payload)
	if creatorRaw != nil {
		if creator, ok := jsonString(creatorRaw); !ok || creator != selfText {
			done(nil, fmt.Errorf("%w: creator_id %s is not this node (%s); only a node's own resources propagate", ferry.ErrNotOwner, creatorRaw, self))
			return
		}
	} else {
		doc = withMember(doc, "creator_id", selfText)
	}
	if len(doc) > s.maxBytes {
		done(nil, fmt.Errorf("%w: payload is %d bytes once encoded, the limit is %d", ferry.ErrTooLarge, len(doc), s.maxBytes))
		return
	}
	kind, proto := kindOf(req.Action)
	partners := s.receivers(s.roles.Partners())
	var res Result
	s.st.Submit(ctx, withIdem(req, &res, func(tx *store.Txn) error {
		cur, err := s.ownRow(tx, req.DataType, self, id)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		exists := err == nil && !cur.Deleted
		if cur != nil && req.idem != nil {
			// A keyed request whose key this store does not hold but whose
			// change it does, made within the key's window: the store lost
			// the key (it was restored from an older copy and took the
			// change back from a partner). The first answer, not a second
			// change; past the window the request runs again, as any.
			same, err := s.sameChange(tx, cur, kind, doc)
			if err != nil {
				return err
			}
			if same {
				res = Result{"id": id, "version": cur.OriginVersion, "receivers": partners}
				return nil
			}
		}
		switch {
		case req.Action == ActionCreate && exists:
			return fmt.Errorf("%w: %s %q exists; update it instead", ferry.ErrConflict, req.DataType, id)
		case req.Action != ActionCreate && !exists:
			if cur == nil {
				if err := s.partnersCopy(tx, req, id); err != nil {
					return err
				}
			}
			return fmt.Errorf("%w: %s %q", ferry.ErrNotFound, req.DataType, id)
		}
		prev, err := tx.CounterValue(CtrResourceHead)
		if err != nil {
			return err
		}
		ver, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: kind, DataType: req.DataType,
			Payload: doc, CreatedAtUnixNano: tx.Now().UnixNano(), PrevVersion: prev})
		if err != nil {
			return err
		}
		tx.SetCounter(CtrResourceHead, ver)
		if cur == nil {
			s.noteOwn(req.DataType, id)
		} else {
			tx.Supersede(cur.OriginVersion) // retention may drop its delivery record
		}
		tx.PutResource(&storepb.Resource{DataType: req.DataType, Id: id, Creator: []byte(self), OriginVersion: ver,
			Version: ver, Deleted: req.Action == ActionDelete, Json: doc, UpdatedAt: tx.Now().UnixNano()})
		s.deliver(tx, store.OwnEntry{Version: ver, Lane: uint8(stream.LaneResource), Kind: kind, Protocol: proto}, sealed)
		res = Result{"id": id, "version": ver, "receivers": partners}
		return nil
	}), func(err error) { done(res, err) })
}

// partnersCopy refuses an update or delete of a resource this node does
// not own but holds from a partner (the app left creator_id out, so it was
// taken as this node's): not_owner, naming the creator, rather than
// not_found, since the node does hold it.
func (s *Service) partnersCopy(tx *store.Txn, req Request, id string) error {
	for _, p := range s.roles.Partners() {
		r, err := tx.GetResource(req.DataType, p, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if r.Deleted {
			continue
		}
		who := s.roles.Name(p)
		if who == "" || who == p.String() {
			who = "partner " + p.String()
		} else {
			who += " (" + p.String() + ")"
		}
		return fmt.Errorf("%w: %s %q was created by %s; this node holds its partner's copy, and only the creator may %s it",
			ferry.ErrNotOwner, req.DataType, id, who, req.Action)
	}
	return nil
}

// sameChange reports whether the change that set an own resource row is of
// kind with the document doc (insignificant spaces aside), and was made
// within the idempotency window.
func (s *Service) sameChange(tx *store.Txn, cur *storepb.Resource, kind pb.Kind, doc []byte) (bool, error) {
	b, err := tx.ChangeBody(cur.Version)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read change %d of %s %q: %w", cur.Version, cur.DataType, cur.Id, err)
	}
	if tx.Now().Sub(time.Unix(0, b.CreatedAtUnixNano)) > s.st.IdempotencyWindow() {
		return false, nil
	}
	return b.Kind == kind && bytes.Equal(idem.JSON(b.Payload), idem.JSON(doc)), nil
}

// deliver records an own change as owed to its receivers (the log is the
// outbox: nothing is written per receiver); the sender hears of it, sealed,
// from the log once it is on disk (store.Follow).
func (s *Service) deliver(tx *store.Txn, e store.OwnEntry, sealed *store.Sealed) {
	e.CreatedAt = tx.Now().UnixNano()
	tx.AddOwnEntry(e, sealed)
}

func (s *Service) considers(ctx context.Context, req Request, obj map[string]json.RawMessage, done func(Result, error)) {
	var ids []string
	raw, ok := obj["peer_ids"]
	switch {
	case !ok:
		done(nil, badRequest("considers needs payload.peer_ids, a non-empty array of peer ids"))
		return
	case json.Unmarshal(raw, &ids) != nil:
		done(nil, badRequest("payload.peer_ids must be an array of peer ids (strings), got %s", shown(raw)))
		return
	case len(ids) == 0:
		done(nil, badRequest("payload.peer_ids is empty; considers goes to the peers it lists"))
		return
	}
	var to []peer.ID
	seen := map[peer.ID]bool{}
	for _, x := range ids {
		p, err := peer.Decode(x)
		if err != nil {
			done(nil, badRequest("payload.peer_ids: %q is not a peer id", x))
			return
		}
		if !s.roles.IsPartner(p) {
			done(nil, fmt.Errorf("%w: %s is not a partner", ferry.ErrForbidden, p))
			return
		}
		if !seen[p] {
			seen[p] = true
			to = append(to, p)
		}
	}
	s.event(ctx, req, to, nil, stream.LaneConsider, done)
}

func (s *Service) plannerPeer(obj map[string]json.RawMessage) (peer.ID, error) {
	var x string
	raw, ok := obj["peer_id"]
	if !ok {
		return "", badRequest("payload.peer_id is missing")
	}
	if json.Unmarshal(raw, &x) != nil {
		return "", badRequest("payload.peer_id must be a peer id (a string), got %s", shown(raw))
	}
	p, err := peer.Decode(x)
	if err != nil {
		return "", badRequest("payload.peer_id: %q is not a peer id", x)
	}
	if !s.roles.IsPartner(p) {
		return "", fmt.Errorf("%w: %s is not a partner; planner streams go to partners only", ferry.ErrForbidden, p)
	}
	return p, nil
}

func (s *Service) planner(ctx context.Context, req Request, obj map[string]json.RawMessage, done func(Result, error)) {
	p, err := s.plannerPeer(obj)
	if err != nil {
		done(nil, err)
		return
	}
	s.event(ctx, req, []peer.ID{p}, []byte(p), stream.LanePlanner, done)
}

// event commits a considers or planner event with one delivery record
// addressed to its receivers.
func (s *Service) event(ctx context.Context, req Request, to []peer.ID, addressee []byte, lane stream.Lane, done func(Result, error)) {
	kind, proto := kindOf(req.Action)
	self := s.roles.Self()
	receivers := s.receivers(to)
	var res Result
	s.st.Submit(ctx, withIdem(req, &res, func(tx *store.Txn) error {
		ver, sealed, err := tx.AppendOwn(&pb.Body{Origin: []byte(self), Kind: kind, DataType: req.DataType,
			Payload: req.Payload, CreatedAtUnixNano: tx.Now().UnixNano(), To: addressee})
		if err != nil {
			return err
		}
		reopen := lane == stream.LanePlanner && s.Hold(to[0], lane)
		if reopen {
			tx.SetAux(auxPlannerClosed+string(to[0]), []byte{0})
			// Reopened before the sender hears of the new entry.
			tx.OnCommit(func() {
				s.holds.set(to[0], false)
				s.log.Info("planner stream reopened", "peer", to[0])
			})
		}
		s.deliver(tx, store.OwnEntry{Version: ver, Lane: uint8(lane), Kind: kind, Protocol: proto, To: to}, sealed)
		res = Result{"version": ver, "receivers": receivers}
		if id, ok := eventID(req.Payload); ok {
			res["id"] = id // what the event is about, as the app named it
		}
		return nil
	}), func(err error) { done(res, err) })
}

// eventID is the id a considers or planner payload names (its top-level
// "id": a non-empty string, or a number as its text), if any.
func eventID(payload []byte) (string, bool) {
	vals, ok := topLevel(payload, "id")
	if !ok || vals[0] == nil {
		return "", false
	}
	return idText(vals[0])
}

// shown is a JSON value quoted back in a message, shortened.
func shown(raw []byte) string {
	const max = 40
	if len(raw) <= max {
		return string(raw)
	}
	cut := max
	for cut > 0 && raw[cut]&0xC0 == 0x80 {
		cut--
	}
	return string(raw[:cut]) + "…"
}

func (s *Service) closePlanner(obj map[string]json.RawMessage, done func(Result, error)) {
	p, err := s.plannerPeer(obj)
	if err != nil {
		done(nil, err)
		return
	}
	if !s.g.Add() {
		done(nil, fmt.Errorf("%w: propagate is closing", ferry.ErrUnavailable))
		return
	}
	s.holds.set(p, true)
	go func() {
		defer s.g.Done()
		err := s.st.Update(s.ctx, func(tx *store.Txn) error {
			tx.SetAux(auxPlannerClosed+string(p), []byte{1})
			return nil
		})
		if err != nil {
			done(nil, err)
			return
		}
		wasOpen := false
		if s.streams != nil {
			wasOpen = s.streams.CloseStream(p, protocols.Planner)
		}
		s.log.Info("planner stream closed", "peer", p, "was_open", wasOpen)
		// No id or version: close_planner writes no change (it is held
		// in the store's settings, not in the log).
		done(Result{"peer_id": p.String(), "closed": wasOpen}, nil)
	}()
}
