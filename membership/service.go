package membership

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/gossiptopic"
	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/internal/promreg"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// Timing.
const (
	// DefaultRepublish is how often a node publishes its record again
	// (unchanged: pulls do the anti-entropy, and each publish floods the
	// whole network, N validations). A shorter Republish also shortens the
	// pull period.
	DefaultRepublish = 30 * time.Minute
	// DefaultLifetime is how long a record makes its peer a member
	// (config member_lifetime): a member that stops renewing it (gone for
	// good, or away this long) is no longer addressed a day later.
	DefaultLifetime = 24 * time.Hour
	// MinLifetime bounds the lifetime from below: a node signs its record
	// again every third of it, and each new record floods the network.
	MinLifetime = 3 * time.Second
	// pullEvery is how often a node pulls the record set from a neighbour
	// once its start schedule is over; a new neighbour brings a pull too,
	// at most every pullAgain. Records held already cost a comparison, not
	// a signature check.
	pullEvery = time.Minute
	pullAgain = 5 * time.Second
	// pullTimeout bounds one pull.
	pullTimeout = 15 * time.Second
	// pageRecords is the records of one MembersPage.
	pageRecords = 128
)

// startSchedule is when a starting node publishes its record and pulls the
// record set, before settling on the republish and pull periods: the first
// publishes may find no neighbour subscribed yet, and the first pulls
// neighbours that do not know every member yet.
var startSchedule = []time.Duration{0, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second,
	20 * time.Second, 30 * time.Second, 45 * time.Second, 60 * time.Second, 90 * time.Second, 120 * time.Second}

// freshPublishes is how many ticks with a peer in the members topic a new
// record is published on: a publish right after a connection opens can be
// lost (the peer's gossipsub stream is not up yet, and the first one was
// lost about one test run in five), and pulls would then be its only way.
const freshPublishes = 2

// pullSoon is how soon a node pulls again (from another neighbour, at
// random) after a pull that brought records it did not hold: while members
// join, the set converges in a few seconds instead of along the schedule.
// While every pull brings news (a big network starting), the wait doubles
// up to pullEvery: each pull that differs moves the whole record set.
const pullSoon = time.Second

// Deps are what the service works with.
type Deps struct {
	Host    host.Host
	PubSub  *pubsub.PubSub
	Key     crypto.PrivKey
	Network string
	Name    string
	Version string
	// Allowed reports whether a peer may be a member at all (the config's
	// members list; nil: anyone presenting the network).
	Allowed func(peer.ID) bool
	// OnRecord runs for each record of another peer that is new or newer
	// than the one held (its Expires always set). It must not block for
	// long.
	OnRecord func(Record)
	// OnExpire runs for each record of another peer dropped at its expiry
	// (no newer one came): the peer left. It must not block for long.
	OnExpire func(Record)
	// Lifetime is how long this node's records last (it signs a new one
	// every third of it), and of another peer's record that names no
	// expiry (an earlier release), counted from its signing. Default
	// DefaultLifetime.
	Lifetime time.Duration
	// Republish defaults to DefaultRepublish.
	Republish  time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Service keeps this node's record spread and the records of the others.
type Service struct {
	d      Deps
	log    *slog.Logger
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
	ctx    context.Context
	cancel context.CancelFunc
	g      lifecycle.Group // the two loops and every members stream handler
	pull   chan struct{}
	// rearm tells the loop that a record taken expires before the one it
	// waits for (nextExpiry).
	rearm chan struct{}

	mu     sync.Mutex
	own    Record
	held   map[peer.ID]Record
	pulled time.Time // last complete pull
	sum    []byte    // digest of held (nil: to compute again)
	// published is when the loop last published the own record, pubSeq
	// the sequence it published and pubTimes how often (the loop's own
	// state).
	published time.Time
	pubSeq    uint64
	pubTimes  int
	started   bool
	// nextExpiry is the earliest expiry of another peer's record held
	// (zero: none), which the loop waits for.
	nextExpiry time.Time

	known   prometheus.Gauge
	expired prometheus.Counter
	records *prometheus.CounterVec // source, outcome
	pulls   *prometheus.CounterVec // answer
}

// New builds the service and signs this node's first record (without
// addresses until Start).
func New(d Deps) (*Service, error) {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Republish <= 0 {
		d.Republish = DefaultRepublish
	}
	if d.Allowed == nil {
		d.Allowed = func(peer.ID) bool { return true }
	}
	if d.OnRecord == nil {
		d.OnRecord = func(Record) {}
	}
	if d.OnExpire == nil {
		d.OnExpire = func(Record) {}
	}
	if d.Lifetime == 0 {
		d.Lifetime = DefaultLifetime
	}
	if d.Lifetime < MinLifetime {
		return nil, fmt.Errorf("membership: record lifetime %v is below %v", d.Lifetime, MinLifetime)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{d: d, log: d.Logger, ctx: ctx, cancel: cancel, pull: make(chan struct{}, 1), rearm: make(chan struct{}, 1),
		held: map[peer.ID]Record{},
		known: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Name: "members_known",
			Help: "Members this node holds a signed membership record of (itself included)."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "members", Name: "expired_total",
			Help: "Membership records of other peers dropped at their expiry (no newer record came: the member left)."}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "members", Name: "records_total",
			Help: "Membership records received, by source (gossip, pull, hello) and outcome (taken, stale, refused)."}, []string{"source", "outcome"}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "members", Name: "pulls_served_total",
			Help: "Pulls of the record set this node answered, by answer: same (the asker's digest matched, nothing sent) or records (every record held)."}, []string{"answer"}),
	}
	for _, src := range []string{"gossip", "pull", "hello"} {
		for _, o := range []string{"taken", "stale", "refused"} {
			s.records.WithLabelValues(src, o)
		}
	}
	if err := s.resign(nil); err != nil {
		cancel()
		return nil, err
	}
	for _, a := range []string{"same", "records"} {
		s.pulls.WithLabelValues(a)
	}
	if err := promreg.Register(d.Registerer, s.known, s.expired, s.records, s.pulls); err != nil {
		cancel()
		return nil, fmt.Errorf("membership: %w", err)
	}
	return s, nil
}

// resign signs a new own record with addrs; callers hold no lock.
func (s *Service) resign(addrs []ma.Multiaddr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	seq := uint64(now.UnixNano())
	if seq <= s.own.Seq {
		seq = s.own.Seq + 1
	}
	r, err := Sign(s.d.Key, Record{Network: s.d.Network, Name: s.d.Name, Version: s.d.Version, Addrs: addrs, Seq: seq,
		Expires: now.Add(s.d.Lifetime)})
	if err != nil {
		return err
	}
	s.own = r
	s.held[r.Peer] = r
	s.sum = nil
	s.known.Set(float64(len(s.held)))
	return nil
}

// Start joins the members topic, serves pulls and starts publishing.
func (s *Service) Start() error {
	t, sub, err := gossiptopic.Join(s.d.PubSub, protocols.MembersTopic(s.d.Network), s.validate)
	if err != nil {
		return err
	}
	s.topic, s.sub = t, sub
	// Anyone may ask: a joining node pulls over its first connection, its
	// own record in the request, before this node counts it a member; the
	// request is one small frame.
	inbound.Handle(s.d.Host, &s.g, protocols.Members, protocols.ServiceMembers, 16<<10, nil, s.log, s.serve)
	if err := s.resign(s.d.Host.Addrs()); err != nil {
		return err
	}
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	s.g.Go(s.readLoop)
	s.g.Go(s.loop)
	return nil
}

// Close leaves the topic and waits for the loops and the pulls being
// served (the cancelled context resets their streams).
func (s *Service) Close() {
	if s.d.Host != nil {
		s.d.Host.RemoveStreamHandler(protocols.Members)
	}
	s.g.Shut()
	s.cancel()
	if s.sub != nil {
		s.sub.Cancel()
	}
	s.g.Close()
	if s.topic != nil {
		_ = s.topic.Close()
		_ = s.d.PubSub.UnregisterTopicValidator(protocols.MembersTopic(s.d.Network))
	}
}

// Own is this node's current signed record, as it travels.
func (s *Service) Own() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.own.Raw
}

// Known is the number of members with a record held, this node included.
func (s *Service) Known() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// digest is the digest of the records held (see pb.MembersRequest); the
// caller holds s.mu.
func (s *Service) digestLocked() []byte {
	if s.sum != nil {
		return s.sum
	}
	ids := make([]peer.ID, 0, len(s.held))
	for id := range s.held {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, compareIDs)
	h := sha256.New()
	var seq [8]byte
	for _, id := range ids {
		h.Write([]byte(id))
		binary.BigEndian.PutUint64(seq[:], s.held[id].Seq)
		h.Write(seq[:])
	}
	s.sum = h.Sum(nil)
	return s.sum
}

// Digest is the digest of the records held: two nodes with the same digest
// hold the same records.
func (s *Service) Digest() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.digestLocked()
}

// Records lists the records held, this node's included, by peer id.
func (s *Service) Records() []Record {
	s.mu.Lock()
	out := make([]Record, 0, len(s.held))
	for _, r := range s.held {
		out = append(out, r)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Record) int { return compareIDs(a.Peer, b.Peer) })
	return out
}

func compareIDs(a, b peer.ID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Joined tells the service that a connection to a member is up: the node
// pulls the record set now unless it pulled within pullAgain (records a
// partition or a bounded set of connections kept apart meet here).
func (s *Service) Joined() {
	s.mu.Lock()
	done := !s.pulled.IsZero() && time.Since(s.pulled) < pullAgain
	s.mu.Unlock()
	if done {
		return
	}
	select {
	case s.pull <- struct{}{}:
	default:
	}
}

// Take verifies a record that came outside gossip (hello) and keeps it if
// it is newer than the one held; it reports whether it was taken.
func (s *Service) Take(raw []byte) (Record, error) { return s.take(raw, "hello") }

func (s *Service) take(raw []byte, source string) (Record, error) {
	r, err := s.check(raw)
	if err != nil {
		if errors.Is(err, ErrStale) || errors.Is(err, ErrExpired) {
			s.records.WithLabelValues(source, "stale").Inc()
		} else {
			s.records.WithLabelValues(source, "refused").Inc()
		}
		return r, err
	}
	s.mu.Lock()
	if h, ok := s.held[r.Peer]; ok && h.Seq >= r.Seq {
		s.mu.Unlock()
		s.records.WithLabelValues(source, "stale").Inc()
		return r, fmt.Errorf("%w: %d <= %d", ErrStale, r.Seq, h.Seq)
	}
	s.held[r.Peer] = r
	s.sum = nil
	s.known.Set(float64(len(s.held)))
	sooner := s.nextExpiry.IsZero() || r.Expires.Before(s.nextExpiry)
	s.mu.Unlock()
	if sooner {
		select {
		case s.rearm <- struct{}{}:
		default:
		}
	}
	s.records.WithLabelValues(source, "taken").Inc()
	s.d.OnRecord(r)
	return r, nil
}

// check opens a record and refuses what the node must not take: another
// network, a peer outside the members list, this node's own id, a record
// not newer than the one held, an expired one. A record that names no
// expiry (an earlier release) gets its signing time plus the lifetime.
func (s *Service) check(raw []byte) (Record, error) {
	if id, seq, ok := peek(raw); ok {
		s.mu.Lock()
		h, held := s.held[id]
		s.mu.Unlock()
		if held && h.Seq >= seq {
			return Record{Peer: id, Seq: seq}, fmt.Errorf("%w: %d <= %d", ErrStale, seq, h.Seq)
		}
	}
	r, err := Open(raw, s.d.Network)
	if err != nil {
		return r, err
	}
	if !s.d.Allowed(r.Peer) {
		return r, fmt.Errorf("%w: %s", ErrNotAllowed, r.Peer)
	}
	s.mu.Lock()
	h, ok := s.held[r.Peer]
	s.mu.Unlock()
	if ok && h.Seq >= r.Seq {
		return r, fmt.Errorf("%w: %d <= %d", ErrStale, r.Seq, h.Seq)
	}
	if r.Expires.IsZero() {
		r.Expires = time.Unix(0, int64(min(r.Seq, math.MaxInt64))).Add(s.d.Lifetime)
	}
	if !time.Now().Before(r.Expires) {
		return r, fmt.Errorf("%w at %s: %s", ErrExpired, r.Expires.UTC().Format(time.RFC3339), r.Peer)
	}
	return r, nil
}

// sweep drops the records of other peers whose expiry passed, tells
// OnExpire of each, and returns the next expiry (zero: none).
func (s *Service) sweep() time.Time {
	now := time.Now()
	var gone []Record
	var next time.Time
	s.mu.Lock()
	for id, r := range s.held {
		switch {
		case id == s.own.Peer:
		case !now.Before(r.Expires):
			gone = append(gone, r)
			delete(s.held, id)
		case next.IsZero() || r.Expires.Before(next):
			next = r.Expires
		}
	}
	if len(gone) > 0 {
		s.sum = nil
		s.known.Set(float64(len(s.held)))
	}
	s.nextExpiry = next
	s.mu.Unlock()
	for _, r := range gone {
		s.expired.Inc()
		s.log.Info("member record expired", "peer", r.Peer, "name", r.Name, "expired_at", r.Expires.UTC())
		s.d.OnExpire(r)
	}
	return next
}

// validate lets through (and forwards) records that verify and are news,
// and the very record held already (its bytes compared, not verified
// again): each publish then floods the network once (gossipsub drops what
// it has seen), reaching the nodes that missed the record however they
// are connected. An older record is ignored (not forwarded: whoever sent
// it may not have the newer one yet); a forged one is rejected (its sender
// is penalised).
func (s *Service) validate(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	raw := msg.GetData()
	if s.holds(raw) {
		return pubsub.ValidationAccept
	}
	_, err := s.check(raw)
	switch {
	case err == nil:
		return pubsub.ValidationAccept
	case errors.Is(err, ErrStale), errors.Is(err, ErrExpired):
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationReject
}

// peek reads a record's peer and sequence without checking its signature:
// a record no newer than the one held is dropped without that cost (a
// forged one claims at most a newer sequence, and is then checked).
func peek(raw []byte) (peer.ID, uint64, bool) {
	if len(raw) > MaxRecordBytes {
		return "", 0, false
	}
	sr := &pb.SignedMemberRecord{}
	m := &pb.MemberRecord{}
	if unmarshal(raw, sr) != nil || proto.Unmarshal(sr.Record, m) != nil {
		return "", 0, false
	}
	id, err := peer.IDFromBytes(m.Peer)
	if err != nil {
		return "", 0, false
	}
	return id, m.Seq, true
}

// holds reports whether raw is, byte for byte, the record held of its peer.
func (s *Service) holds(raw []byte) bool {
	id, _, ok := peek(raw)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h, held := s.held[id]
	return held && bytes.Equal(h.Raw, raw)
}

func (s *Service) readLoop() {
	for {
		msg, err := s.sub.Next(s.ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == s.d.Host.ID() {
			continue
		}
		_, _ = s.take(msg.GetData(), "gossip")
	}
}

// loop publishes the own record once per record (a new one when the
// addresses changed or a third of its lifetime passed), as soon as the
// members topic has a peer, and again every Republish period; pulls the
// record set: on Joined until one pull succeeded, at each step of the
// start schedule, after a pull that brought news, then each period; and
// drops the records of others at their expiry (sweep). Each publish floods
// the network (every node validates it once); a pull costs one neighbour
// a digest comparison when nothing is new.
func (s *Service) loop() {
	step := 0
	t := time.NewTimer(0)
	defer t.Stop()
	// soon runs a pull after one that brought news (pullSoon).
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	defer soon.Stop()
	armed := false
	// next is the wait after a pull that brought news: pullSoon, doubling
	// while each pull brings news (members keep joining) up to pullEvery,
	// back to pullSoon after one that brought none.
	next := pullSoon
	pull := func() {
		if s.pullOne() == 0 {
			next = pullSoon
			return
		}
		if !armed {
			armed = true
			soon.Reset(next/2 + rand.N(next/2+1))
			next = min(2*next, pullEvery)
		}
	}
	// exp fires at the next expiry of a record held (sweep).
	exp := time.NewTimer(time.Hour)
	defer exp.Stop()
	sweep := func() {
		exp.Stop()
		if next := s.sweep(); !next.IsZero() {
			exp.Reset(time.Until(next))
		}
	}
	sweep()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.pull:
			pull()
			continue
		case <-soon.C:
			armed = false
			pull()
			continue
		case <-s.rearm:
			sweep()
			continue
		case <-exp.C:
			sweep()
			continue
		case <-t.C:
		}
		s.refresh()
		s.mu.Lock()
		fresh := s.own.Seq != s.pubSeq || s.pubTimes < freshPublishes
		s.mu.Unlock()
		// A new record waits for a peer in the topic (published alone it
		// would reach no one) and goes on freshPublishes ticks; the same
		// record goes again each Republish.
		if (fresh && len(s.topic.ListPeers()) > 0) || (!fresh && time.Since(s.published) >= s.d.Republish) {
			s.publish()
		}
		s.mu.Lock()
		due := step < len(startSchedule) || s.pulled.IsZero() || time.Since(s.pulled) >= min(pullEvery, s.d.Republish)
		s.mu.Unlock()
		if due {
			pull()
		}
		step++
		wait := min(pullEvery, s.d.Republish)
		if step < len(startSchedule) {
			wait = startSchedule[step] - startSchedule[step-1]
		}
		// Jitter: nodes started together do not pull together. The own
		// record is renewed on time whatever the period.
		t.Reset(min(wait/2+rand.N(wait/2+1), max(time.Until(s.renewAt()), renewRetry)))
	}
}

// renewRetry is the shortest wait for a renewal (one that failed to sign
// is tried again after it, not in a busy loop).
const renewRetry = 100 * time.Millisecond

// renewAt is when the own record is due to be signed again: a third of
// the lifetime after it was (two thirds of it are left for the new record
// to reach every holder).
func (s *Service) renewAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Unix(0, int64(s.own.Seq)).Add(s.d.Lifetime / 3)
}

// refresh signs the own record again when the addresses changed or a third
// of its lifetime passed.
func (s *Service) refresh() {
	addrs := s.d.Host.Addrs()
	renew := s.renewAt()
	s.mu.Lock()
	same := slices.EqualFunc(addrs, s.own.Addrs, func(a, b ma.Multiaddr) bool { return a.Equal(b) })
	old := !time.Now().Before(renew)
	s.mu.Unlock()
	if same && !old {
		return
	}
	if err := s.resign(addrs); err != nil {
		s.log.Warn("sign member record", "err", err)
	}
}

// publish sends the own record.
func (s *Service) publish() {
	s.mu.Lock()
	own, seq := s.own.Raw, s.own.Seq
	s.mu.Unlock()
	s.published = time.Now()
	if seq != s.pubSeq {
		s.pubTimes = 0
	}
	s.pubSeq = seq
	s.pubTimes++
	if err := s.topic.Publish(s.ctx, own); err != nil && s.ctx.Err() == nil {
		s.log.Debug("publish member record", "err", err)
	}
}

// pullOne asks one connected peer, at random among those in the members
// topic (else any connected peer), for every record it holds; it returns
// the records taken.
func (s *Service) pullOne() int {
	cands := s.topic.ListPeers()
	if len(cands) == 0 {
		cands = s.d.Host.Network().Peers()
	}
	cands = slices.DeleteFunc(cands, func(p peer.ID) bool { return !s.d.Allowed(p) })
	if len(cands) == 0 {
		return 0
	}
	p := cands[rand.N(len(cands))]
	n, err := s.Pull(s.ctx, p)
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Debug("pull member records", "peer", p, "err", err)
		}
		return n
	}
	s.mu.Lock()
	s.pulled = time.Now()
	s.mu.Unlock()
	s.log.Debug("pulled member records", "peer", p, "records", n)
	return n
}

// Pull asks p, over a connection already open, for every record it holds;
// it sends this node's own record first. It returns the records taken.
func (s *Service) Pull(ctx context.Context, p peer.ID) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	st, err := s.d.Host.NewStream(network.WithNoDial(ctx, "members pull"), p, protocols.Members)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", protocols.Members, err)
	}
	_ = st.SetDeadline(time.Now().Add(pullTimeout))
	req := &pb.MembersRequest{Digest: s.Digest()}
	self := &pb.SignedMemberRecord{}
	if err := unmarshal(s.Own(), self); err == nil {
		req.Self = self
	}
	fw := protocols.NewFrameWriter(st, pageBytes)
	defer fw.Release()
	err = fw.Write(req)
	if err == nil {
		err = fw.Flush()
	}
	if err != nil {
		_ = st.Reset()
		return 0, err
	}
	fr := protocols.NewFrameReader(st, pageBytes)
	defer fr.Release()
	taken := 0
	// theirs is what the answer held, by peer: the records this node
	// holds newer or besides go back (push-pull: both ends converge).
	theirs := map[peer.ID]uint64{}
	for {
		page := &pb.MembersPage{}
		if err := fr.Read(page); err != nil {
			_ = st.Reset()
			return taken, fmt.Errorf("read members page: %w", err)
		}
		for _, r := range page.Records {
			raw, err := marshal(r)
			if err != nil {
				continue
			}
			if id, seq, ok := peek(raw); ok {
				theirs[id] = max(theirs[id], seq)
			}
			if _, err := s.take(raw, "pull"); err == nil {
				taken++
			}
		}
		if page.Done {
			break
		}
	}
	if len(theirs) > 0 {
		var back []Record
		for _, r := range s.Records() {
			if seq, ok := theirs[r.Peer]; !ok || seq < r.Seq {
				back = append(back, r)
			}
		}
		if err := writePages(fw, back); err != nil {
			// The pull itself is complete; an answerer of an earlier
			// release closed the stream after its pages.
			_ = st.Reset()
			s.log.Debug("push members pages", "peer", p, "err", err)
			return taken, nil
		}
	}
	_ = st.Close()
	return taken, nil
}

// writePages writes recs as MembersPages, the last one done, and flushes.
func writePages(fw *protocols.FrameWriter, recs []Record) error {
	for {
		n := min(len(recs), pageRecords)
		page := &pb.MembersPage{Done: n == len(recs)}
		for _, r := range recs[:n] {
			m := &pb.SignedMemberRecord{}
			if err := unmarshal(r.Raw, m); err == nil {
				page.Records = append(page.Records, m)
			}
		}
		recs = recs[n:]
		if err := fw.Write(page); err != nil {
			return err
		}
		if page.Done {
			return fw.Flush()
		}
	}
}

// pageBytes bounds one MembersPage frame.
const pageBytes = pageRecords*(MaxRecordBytes+8) + 16

// serve answers a pull with every record held, in pages.
func (s *Service) serve(st network.Stream) error {
	defer context.AfterFunc(s.ctx, func() { _ = st.Reset() })()
	_ = st.SetDeadline(time.Now().Add(pullTimeout))
	req := &pb.MembersRequest{}
	fr := protocols.NewFrameReader(st, MaxRecordBytes+64)
	defer fr.Release()
	if err := fr.Read(req); err != nil {
		return fmt.Errorf("read members request: %w", err)
	}
	if req.Self != nil {
		if raw, err := marshal(req.Self); err == nil {
			if r, err := s.take(raw, "pull"); err != nil && !errors.Is(err, ErrStale) {
				return fmt.Errorf("asker's record: %w", err)
			} else if err == nil && r.Peer != st.Conn().RemotePeer() {
				s.log.Debug("pull carried another peer's record", "peer", st.Conn().RemotePeer(), "record", r.Peer)
			}
		}
	}
	fw := protocols.NewFrameWriter(st, pageBytes)
	defer fw.Release()
	if len(req.Digest) > 0 && bytes.Equal(req.Digest, s.Digest()) {
		s.pulls.WithLabelValues("same").Inc()
		if err := fw.Write(&pb.MembersPage{Done: true}); err != nil {
			return err
		}
		return fw.Flush()
	}
	s.pulls.WithLabelValues("records").Inc()
	if err := writePages(fw, s.Records()); err != nil {
		return err
	}
	// The asker sends back what it holds and this node did not (a peer of
	// an older release closes its side instead: EOF, nothing to take).
	if fr.Buffered() > 0 {
		return fmt.Errorf("members request: data after the request")
	}
	fr.Release()
	back := protocols.NewFrameReader(st, pageBytes)
	defer back.Release()
	for {
		page := &pb.MembersPage{}
		if err := back.Read(page); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read pushed members page: %w", err)
		}
		for _, r := range page.Records {
			if raw, err := marshal(r); err == nil {
				_, _ = s.take(raw, "pull")
			}
		}
		if page.Done {
			return nil
		}
	}
}

func marshal(m *pb.SignedMemberRecord) ([]byte, error) { return proto.Marshal(m) }

func unmarshal(b []byte, m *pb.SignedMemberRecord) error { return proto.Unmarshal(b, m) }
