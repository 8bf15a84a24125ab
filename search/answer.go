package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/internal/inbound"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
)

// errMalformed marks a query or frame that breaks the protocol.
var errMalformed = errors.New("malformed search message")

// answerJob is a query to answer.
type answerJob struct {
	q     *pb.SearchQuery
	asker peer.ID
}

type answeredKey struct {
	asker peer.ID
	id    string
}

// checkQuery validates a decoded query and returns its asker.
func checkQuery(q *pb.SearchQuery, now time.Time) (peer.ID, error) {
	bad := func(format string, args ...any) (peer.ID, error) {
		return "", fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
	}
	if !ValidQueryID(q.GetQueryId()) {
		return bad("query_id %q", q.GetQueryId())
	}
	if !tokenRe.MatchString(q.GetDataType()) || q.GetDataType() == DataTypePeer {
		return bad("data_type %q", q.GetDataType())
	}
	if len(q.GetText()) > MaxTextBytes || !utf8.ValidString(q.GetText()) {
		return bad("text is not UTF-8 of at most %d bytes", MaxTextBytes)
	}
	if q.GetLimit() < 1 || q.GetLimit() > MaxLimit {
		return bad("limit %d", q.GetLimit())
	}
	if d := q.GetDeadlineUnixNano(); d <= 0 || time.Unix(0, d).After(now.Add(MaxWait+clockSkew)) {
		return bad("deadline %d", d)
	}
	asker, err := peer.IDFromBytes(q.GetAsker())
	if err != nil {
		return bad("asker: %v", err)
	}
	return asker, nil
}

// decodeQuery decodes and validates a gossip message's query.
func decodeQuery(data []byte, now time.Time) (*pb.SearchQuery, peer.ID, error) {
	if len(data) > maxQueryBytes {
		return nil, "", fmt.Errorf("%w: %d bytes > %d", errMalformed, len(data), maxQueryBytes)
	}
	q := &pb.SearchQuery{}
	if err := proto.Unmarshal(data, q); err != nil {
		return nil, "", fmt.Errorf("%w: %w", errMalformed, err)
	}
	asker, err := checkQuery(q, now)
	return q, asker, err
}

// admit checks who sent a well-formed query; it returns why the query is
// dropped, or "".
func (s *Service) admit(asker, sender peer.ID) string {
	switch {
	case asker != sender:
		return dropSpoofed
	case !s.d.Roles.IsMember(sender):
		return dropNotMember
	}
	ok, first := s.limiter.allow(sender)
	if !ok {
		if first {
			s.log.Warn("search queries over the rate limit; dropping until it recovers", "peer", sender,
				"rate", QueryRate, "burst", QueryBurst)
		}
		return dropRateLimited
	}
	return ""
}

// drop counts and logs a dropped query, frame or result set.
func (s *Service) drop(reason string, p peer.ID, via string, err error) {
	s.m.dropped.WithLabelValues(reason).Inc()
	switch reason {
	case dropRateLimited:
		// admit logged the first drop of the run.
		s.log.Debug("search query dropped", "reason", reason, "peer", p, "via", via)
	case dropMalformed, dropSpoofed:
		s.log.Warn("search message dropped", "reason", reason, "peer", p, "via", via, "err", err)
	case dropNotMember, dropQueueFull:
		s.log.Info("search message dropped", "reason", reason, "peer", p, "via", via, "err", err)
	default:
		s.log.Debug("search message dropped", "reason", reason, "peer", p, "via", via, "err", err)
	}
}

// validateGossip is the search topic's validator: it rejects malformed and
// spoofed queries and those of non-members, and ignores senders over their
// rate. It hands the decoded query to the reader as ValidatorData.
func (s *Service) validateGossip(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	from := msg.GetFrom()
	if from == s.self {
		return pubsub.ValidationAccept // this node's own query, validated as it is published
	}
	q, asker, err := decodeQuery(msg.GetData(), s.now())
	if err != nil {
		s.drop(dropMalformed, from, "gossip", err)
		return pubsub.ValidationReject
	}
	if reason := s.admit(asker, from); reason != "" {
		s.drop(reason, from, "gossip", fmt.Errorf("asker %s", asker))
		if reason == dropRateLimited {
			return pubsub.ValidationIgnore
		}
		return pubsub.ValidationReject
	}
	msg.ValidatorData = q
	return pubsub.ValidationAccept
}

// gossipLoop reads the search topic.
func (s *Service) gossipLoop() {
	sub := s.sub
	for {
		msg, err := sub.Next(s.ctx)
		if err != nil || msg == nil {
			return
		}
		if msg.GetFrom() == s.self {
			continue
		}
		q, ok := msg.ValidatorData.(*pb.SearchQuery)
		if !ok {
			continue
		}
		s.m.queries.WithLabelValues("in", "gossip").Inc()
		s.enqueue(q, msg.GetFrom(), "gossip")
	}
}

// serve handles one inbound /ferry/search/1.0.0 stream: one frame, a query
// (direct scopes) or results (an answer to this node's query).
// admitStream lets members open search streams; a stranger's is reset at
// open, before its frame is read.
func (s *Service) admitStream(p peer.ID) bool {
	if s.d.Roles.IsMember(p) {
		return true
	}
	s.m.dropped.WithLabelValues(dropNotMember).Inc()
	return false
}

func (s *Service) serve(st network.Stream) error {
	remote := st.Conn().RemotePeer()
	if !s.d.Roles.IsMember(remote) {
		s.m.dropped.WithLabelValues(dropNotMember).Inc()
		return inbound.Refuse("not a member", nil)
	}
	_ = st.SetDeadline(time.Now().Add(streamTimeout))
	// Close does not wait out the deadline of a peer that sends slowly.
	defer context.AfterFunc(s.ctx, func() { _ = st.Reset() })()
	f := &pb.SearchFrame{}
	fr := protocols.NewFrameReader(st, s.max).Account(st.Scope())
	defer fr.Release()
	if err := fr.Read(f); err != nil {
		s.m.dropped.WithLabelValues(dropMalformed).Inc()
		return fmt.Errorf("read search frame: %w", err)
	}
	switch {
	case f.Query != nil && f.Results == nil:
		return s.serveQuery(remote, f.Query)
	case f.Results != nil && f.Query == nil:
		return s.serveResults(remote, f.Results)
	}
	s.m.dropped.WithLabelValues(dropMalformed).Inc()
	return inbound.Refuse("a search frame carries a query or results", errMalformed)
}

func (s *Service) serveQuery(remote peer.ID, q *pb.SearchQuery) error {
	asker, err := checkQuery(q, s.now())
	if err != nil {
		s.m.dropped.WithLabelValues(dropMalformed).Inc()
		return inbound.Refuse("malformed query", err)
	}
	switch reason := s.admit(asker, remote); reason {
	case "":
	case dropRateLimited:
		s.drop(reason, remote, "stream", nil)
		return nil
	default:
		s.m.dropped.WithLabelValues(reason).Inc()
		return inbound.Refuse(reason, fmt.Errorf("query %s asked by %s", q.GetQueryId(), asker))
	}
	s.m.queries.WithLabelValues("in", "stream").Inc()
	s.enqueue(q, asker, "stream")
	return nil
}

// serveResults takes one peer's results for an open query and publishes them.
func (s *Service) serveResults(remote peer.ID, r *pb.SearchResults) error {
	if !ValidQueryID(r.GetQueryId()) || !tokenRe.MatchString(r.GetDataType()) {
		s.m.dropped.WithLabelValues(dropMalformed).Inc()
		return inbound.Refuse("malformed results", fmt.Errorf("%w: query_id %q, data_type %q", errMalformed, r.GetQueryId(), r.GetDataType()))
	}
	for i, doc := range r.GetResults() {
		if !json.Valid(doc) {
			s.m.dropped.WithLabelValues(dropMalformed).Inc()
			return inbound.Refuse("malformed results", fmt.Errorf("%w: result %d is not JSON", errMalformed, i))
		}
	}
	now := s.now()
	s.mu.Lock()
	q := s.open[r.GetQueryId()]
	reason := ""
	switch {
	case q == nil || q.local || now.After(q.deadline):
		reason = dropUnknown
	case q.dataType != r.GetDataType():
		reason = dropMalformed
	case q.from[remote]:
		reason = dropDuplicate
	default:
		q.from[remote] = true
	}
	s.mu.Unlock()
	if reason != "" {
		s.drop(reason, remote, "stream", fmt.Errorf("results for query %s (%s)", r.GetQueryId(), r.GetDataType()))
		return nil
	}
	docs := r.GetResults()
	if len(docs) > q.limit {
		docs = docs[:q.limit]
	}
	ev := Event{From: remote.String(), DataType: q.dataType, Results: make([]json.RawMessage, len(docs))}
	for i, d := range docs {
		ev.Results[i] = d
	}
	s.deliver(q, ev)
	return nil
}

// enqueue hands a query to the answer workers, once per (asker, query id).
func (s *Service) enqueue(q *pb.SearchQuery, asker peer.ID, via string) {
	if asker == s.self {
		return
	}
	now := s.now()
	key := answeredKey{asker: asker, id: q.GetQueryId()}
	s.mu.Lock()
	if until, ok := s.answered[key]; ok && now.Before(until) {
		s.mu.Unlock()
		s.drop(dropDuplicate, asker, via, fmt.Errorf("query %s", q.GetQueryId()))
		return
	}
	if len(s.answered) >= maxAnswered {
		for k, until := range s.answered {
			if !now.Before(until) {
				delete(s.answered, k)
			}
		}
	}
	full := len(s.answered) >= maxAnswered
	if !full {
		s.answered[key] = time.Unix(0, q.GetDeadlineUnixNano()).Add(clockSkew)
	}
	s.mu.Unlock()
	if full {
		s.drop(dropQueueFull, asker, via, errors.New("too many queries in flight"))
		return
	}
	select {
	case s.answers <- answerJob{q: q, asker: asker}:
	default:
		s.drop(dropQueueFull, asker, via, fmt.Errorf("query %s", q.GetQueryId()))
	}
}

// answerLoop answers queued queries.
func (s *Service) answerLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case j := <-s.answers:
			s.answer(j)
		}
	}
}

// answer sends this node's matching resources to the asker, if any.
func (s *Service) answer(j answerJob) {
	q := j.q
	deadline := time.Unix(0, q.GetDeadlineUnixNano())
	if s.now().After(deadline.Add(clockSkew)) {
		s.drop(dropExpired, j.asker, "answer", fmt.Errorf("query %s", q.GetQueryId()))
		return
	}
	docs, err := s.match(q.GetDataType(), q.GetText(), int(q.GetLimit()))
	if err != nil {
		s.log.Warn("search: read resources", "data_type", q.GetDataType(), "err", err)
		return
	}
	if len(docs) == 0 {
		return
	}
	frame := &pb.SearchFrame{Results: &pb.SearchResults{QueryId: q.GetQueryId(), DataType: q.GetDataType(), Results: docs}}
	select {
	case s.dials <- struct{}{}:
	case <-s.ctx.Done():
		return
	}
	err = s.send(j.asker, frame, deadline)
	<-s.dials
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Debug("search results not sent", "peer", j.asker, "query", q.GetQueryId(), "err", err)
		}
		return
	}
	s.m.results.WithLabelValues("out").Add(float64(len(docs)))
	s.log.Debug("search answered", "peer", j.asker, "query", q.GetQueryId(), "results", len(docs))
}

// match lists this node's own live resources of a data type whose JSON
// contains text (case-insensitive; empty text matches all), at most limit
// and at most one message's worth of bytes.
func (s *Service) match(dataType, text string, limit int) ([][]byte, error) {
	rs, err := s.d.Store.Resources(dataType)
	if err != nil {
		return nil, err
	}
	needle := bytes.ToLower([]byte(text))
	budget := s.d.MaxMessageBytes
	var out [][]byte
	for _, r := range rs {
		if len(out) >= limit {
			break
		}
		if r.Deleted || r.DataType != dataType || peer.ID(r.Creator) != s.self {
			continue
		}
		if len(needle) > 0 && !bytes.Contains(bytes.ToLower(r.Json), needle) {
			continue
		}
		size := len(r.Json) + 8 // field tag and length
		if size > budget {
			continue
		}
		budget -= size
		out = append(out, r.Json)
	}
	return out, nil
}
