package admin

// trace.go follows one change across the network for an operator: where it
// is on each node (committed at the origin, sent, applied and acknowledged
// by each receiver, published to apps). The facts of other nodes come over
// /ferry/trace/1.0.0: one TraceQuery, one TraceAnswer, members only.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/propagate"
	"github.com/ferrynet/ferry/protocols"
	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
	"github.com/ferrynet/ferry/stream"
)

// The trace protocol's limits (its id and service name are protocols.Trace
// and protocols.ServiceTrace).
const (
	// maxTraceQueryBytes bounds a query (two ids); maxTraceAnswerBytes an
	// answer (at most maxTraceReceivers rows).
	maxTraceQueryBytes  = 1024
	maxTraceAnswerBytes = 256 << 10
	maxTraceReceivers   = 1000
	traceTimeout        = 5 * time.Second
	traceParallel       = 8
)

// TraceReport is where one change is on each node.
type TraceReport struct {
	Origin      string      `json:"origin"`
	OriginName  string      `json:"origin_name"`
	Version     uint64      `json:"version"` // the origin's version
	Kind        string      `json:"kind,omitempty"`
	DataType    string      `json:"data_type,omitempty"`
	CommittedAt time.Time   `json:"committed_at,omitzero"`
	TracedAt    time.Time   `json:"traced_at"`
	Nodes       []TraceNode `json:"nodes"` // the origin first, then its receivers in their order
}

// TraceNode is one node's part in a change.
type TraceNode struct {
	Name          string    `json:"name"`
	PeerID        string    `json:"peer_id"`
	Role          string    `json:"role"` // origin, receiver
	Asked         bool      `json:"asked"`
	AskError      string    `json:"ask_error,omitempty"` // the node could not be asked
	Held          bool      `json:"held"`
	LocalVersion  uint64    `json:"local_version,omitempty"`
	AppliedAt     time.Time `json:"applied_at,omitzero"`
	Published     string    `json:"published,omitempty"`
	Ack           string    `json:"ack,omitempty"` // the origin's acknowledgement row: pending, sended, rejected
	Attempts      uint32    `json:"attempts,omitempty"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	Error         string    `json:"error,omitempty"`
}

// ParseChangeRef reads "<origin>/<version>", the origin a peer id or the
// name of a known peer (or this node).
func (srv *Server) ParseChangeRef(s string) (peer.ID, uint64, error) {
	o, v, ok := strings.Cut(s, "/")
	ver, err := strconv.ParseUint(v, 10, 64)
	if !ok || err != nil || ver == 0 {
		return "", 0, badReq("%q is not <origin>/<version> (origin: a peer id or a node name; version: a positive number)", s)
	}
	if id, err := peer.Decode(o); err == nil {
		return id, ver, nil
	}
	if strings.EqualFold(o, srv.name) {
		return srv.id, ver, nil
	}
	for _, p := range srv.PeerInfos() {
		if strings.EqualFold(p.Name, o) {
			id, _ := peer.Decode(p.PeerID)
			return id, ver, nil
		}
	}
	return "", 0, fmt.Errorf("%w: no peer named %q is known here", ferry.ErrNotFound, o)
}

// ParseTraceRef reads what an operator names a change by:
//   - "<origin>/<version>" (ParseChangeRef);
//   - "<data_type>/<id>", a resource held here: its last change (on its
//     origin node, the one its app made);
//   - "<request id>", a review request held here: the change that carried it.
func (srv *Server) ParseTraceRef(s string) (peer.ID, uint64, error) {
	s = strings.TrimSpace(s)
	if id, err := strconv.ParseUint(s, 10, 64); err == nil {
		row, err := srv.review.Request(id)
		if err != nil {
			return "", 0, fmt.Errorf("request %d: %w", id, err)
		}
		return srv.ParseChangeRef(row.Origin)
	}
	origin, ver, err := srv.ParseChangeRef(s)
	if err == nil {
		return origin, ver, nil
	}
	dataType, id, ok := strings.Cut(s, "/")
	if !ok || dataType == "" || id == "" {
		return "", 0, badReq("%q is not <origin>/<version>, <data_type>/<id> or a request id", s)
	}
	rows, rerr := srv.resourcesByID(dataType, id)
	switch {
	case rerr != nil:
		return "", 0, rerr
	case len(rows) == 0:
		return "", 0, fmt.Errorf("%w: %q is neither a change (%v) nor a resource held here", ferry.ErrNotFound, s, err)
	case len(rows) > 1:
		var who []string
		for _, r := range rows {
			who = append(who, srv.book.Name(peer.ID(r.Creator))+"/"+strconv.FormatUint(r.OriginVersion, 10))
		}
		return "", 0, badReq("%d nodes created a %s %q: name the change, one of %s", len(rows), dataType, id, strings.Join(who, ", "))
	}
	return peer.ID(rows[0].Creator), rows[0].OriginVersion, nil
}

// resourcesByID reads the rows of one resource id, of any creator.
func (srv *Server) resourcesByID(dataType, id string) ([]*storepb.Resource, error) {
	if !propagate.ValidDataType(dataType) {
		return nil, badReq("data type %q must be 1-64 letters, digits, '_' or '-'", dataType)
	}
	var out []*storepb.Resource
	if r, err := srv.st.Resource(dataType, srv.id, id); err == nil {
		out = append(out, r)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	for _, p := range srv.book.Partners() {
		if r, err := srv.st.Resource(dataType, p, id); err == nil {
			out = append(out, r)
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	return out, nil
}

// Trace follows the change (origin, version): this node's facts, the
// origin's (its acknowledgement rows name the receivers) and each
// receiver's, asked over the trace protocol.
func (srv *Server) Trace(ctx context.Context, origin peer.ID, version uint64) (TraceReport, error) {
	rep := TraceReport{Origin: origin.String(), OriginName: srv.book.Name(origin), Version: version, TracedAt: time.Now().UTC()}
	var at *pb.TraceAnswer
	if origin == srv.id {
		at = srv.traceFacts(origin, version)
	} else {
		var err error
		if at, err = srv.askTrace(ctx, origin, origin, version); err != nil {
			at = nil
			rep.Nodes = append(rep.Nodes, TraceNode{Name: srv.book.Name(origin), PeerID: origin.String(), Role: "origin", AskError: err.Error()})
		}
	}
	if at != nil {
		if at.Error != "" {
			return rep, fmt.Errorf("%w: %s", ferry.ErrForbidden, at.Error)
		}
		if !at.Held {
			return rep, fmt.Errorf("%w: %s holds no change %d of its own", ferry.ErrNotFound, srv.book.Name(origin), version)
		}
		rep.Kind, rep.DataType = stream.LaneFor(at.Kind).String(), at.DataType
		if at.CommittedAtUnixNano > 0 {
			rep.CommittedAt = time.Unix(0, at.CommittedAtUnixNano).UTC()
		}
		rep.Nodes = append(rep.Nodes, nodeOf(origin, "origin", at))
	}
	// The receivers, from the origin's rows; else this node alone.
	type ask struct {
		i int
		p peer.ID
	}
	var asks []ask
	if at != nil {
		for _, r := range at.Receivers {
			p := peer.ID(r.Peer)
			tn := TraceNode{Name: r.Name, PeerID: p.String(), Role: "receiver", Ack: r.Ack, Attempts: r.Attempts, Error: r.Error}
			if r.NextAttemptAtUnixNano > 0 {
				tn.NextAttemptAt = time.Unix(0, r.NextAttemptAtUnixNano).UTC()
			}
			rep.Nodes = append(rep.Nodes, tn)
			asks = append(asks, ask{len(rep.Nodes) - 1, p})
		}
	} else {
		rep.Nodes = append(rep.Nodes, TraceNode{Name: srv.name, PeerID: srv.id.String(), Role: "receiver"})
		asks = append(asks, ask{len(rep.Nodes) - 1, srv.id})
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, traceParallel)
	for _, a := range asks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var ans *pb.TraceAnswer
			var err error
			if a.p == srv.id {
				ans = srv.traceFacts(origin, version)
			} else {
				ans, err = srv.askTrace(ctx, a.p, origin, version)
			}
			tn := &rep.Nodes[a.i]
			if err != nil {
				tn.AskError = err.Error()
				return
			}
			if ans.Error != "" {
				tn.AskError = ans.Error
				return
			}
			got := nodeOf(a.p, "receiver", ans)
			got.Ack, got.Attempts, got.NextAttemptAt, got.Error = tn.Ack, tn.Attempts, tn.NextAttemptAt, tn.Error
			if rep.Kind == "" && ans.Held {
				rep.Kind = stream.LaneFor(ans.Kind).String()
			}
			*tn = got
		}()
	}
	wg.Wait()
	return rep, nil
}

func nodeOf(p peer.ID, role string, a *pb.TraceAnswer) TraceNode {
	tn := TraceNode{Name: a.Name, PeerID: p.String(), Role: role, Asked: true, Held: a.Held, LocalVersion: a.LocalVersion,
		Published: a.Published}
	if a.AppliedAtUnixNano > 0 {
		tn.AppliedAt = time.Unix(0, a.AppliedAtUnixNano).UTC()
	}
	return tn
}

// traceFacts is what this node knows of the change (origin, version).
func (srv *Server) traceFacts(origin peer.ID, version uint64) *pb.TraceAnswer {
	a := &pb.TraceAnswer{Name: srv.name}
	if origin == srv.id {
		b, err := srv.st.ChangeBody(version)
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				a.Error = "read the change: " + err.Error()
			}
			return a
		}
		a.Held, a.LocalVersion, a.Kind, a.DataType = true, version, b.Kind, b.DataType
		a.CommittedAtUnixNano, a.AppliedAtUnixNano = b.CreatedAtUnixNano, b.CreatedAtUnixNano
		page, err := srv.Acks(AckQuery{Version: version, Limit: maxTraceReceivers})
		if err != nil {
			a.Error = "read the acknowledgement rows: " + err.Error()
			return a
		}
		for _, r := range page.Rows {
			id, _ := peer.Decode(r.ReceiverID)
			tr := &pb.TraceReceiver{Peer: []byte(id), Name: r.Receiver, Ack: r.Ack, Attempts: r.Attempts, Error: cmp.Or(r.Error, r.Reason)}
			if !r.NextAttemptAt.IsZero() {
				tr.NextAttemptAtUnixNano = r.NextAttemptAt.UnixNano()
			}
			a.Receivers = append(a.Receivers, tr)
		}
		return a
	}
	e, err := srv.originEntry(origin, version)
	if errors.Is(err, store.ErrNotFound) {
		return a
	}
	if err != nil {
		a.Error = "read the change: " + err.Error()
		return a
	}
	a.Held, a.LocalVersion, a.Kind = true, e.LocalVersion, e.Kind
	if !e.AppliedAt.IsZero() {
		a.AppliedAtUnixNano = e.AppliedAt.UnixNano()
	}
	if b, err := srv.st.ChangeBody(e.LocalVersion); err == nil {
		a.DataType = b.DataType
		a.Published = srv.publishedSubject(b)
	}
	return a
}

// originEntry is where the change (origin, version) from another origin
// sits in this store, and when it was applied here.
func (srv *Server) originEntry(origin peer.ID, version uint64) (store.OriginEntry, error) {
	return srv.st.OriginEntry(origin, version)
}

// publishedSubject is the subject this node's apps heard the change on.
func (srv *Server) publishedSubject(b *pb.Body) string {
	p := srv.natsPrefix + "."
	switch b.Kind {
	case pb.Kind_KIND_RESOURCE_CREATE:
		return p + "resource.created." + b.DataType
	case pb.Kind_KIND_RESOURCE_UPDATE:
		return p + "resource.updated." + b.DataType
	case pb.Kind_KIND_RESOURCE_DELETE:
		return p + "resource.deleted." + b.DataType
	case pb.Kind_KIND_CONSIDERS:
		return p + "considers." + b.DataType
	case pb.Kind_KIND_PLANNER:
		return p + "planner." + b.DataType
	case pb.Kind_KIND_REVIEW_REQUEST:
		return p + "review.requested"
	case pb.Kind_KIND_REVIEW_DECISION:
		return p + "review.decided." + b.DataType
	}
	return ""
}

// ServeTrace answers one trace query from a member (the node registers it
// for protocols.Trace).
func (srv *Server) ServeTrace(s network.Stream) error {
	_ = s.SetDeadline(time.Now().Add(traceTimeout))
	remote := s.Conn().RemotePeer()
	q := &pb.TraceQuery{}
	if err := protocols.NewFrameReader(s, maxTraceQueryBytes).Read(q); err != nil {
		return fmt.Errorf("read trace query: %w", err)
	}
	var a *pb.TraceAnswer
	origin, err := peer.IDFromBytes(q.Origin)
	switch {
	case !srv.book.IsMember(remote):
		a = &pb.TraceAnswer{Name: srv.name, Error: "traces are answered for members only"}
	case err != nil || q.OriginVersion == 0:
		a = &pb.TraceAnswer{Name: srv.name, Error: "the query names no change"}
	default:
		a = srv.traceFacts(origin, q.OriginVersion)
	}
	fw := protocols.NewFrameWriter(s, maxTraceAnswerBytes)
	if err := fw.Write(a); err != nil {
		return err
	}
	return fw.Flush()
}

// askTrace asks p what it knows of the change (origin, version).
func (srv *Server) askTrace(ctx context.Context, p, origin peer.ID, version uint64) (*pb.TraceAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, traceTimeout)
	defer cancel()
	s, err := srv.host.NewStream(ctx, p, protocols.Trace)
	if err != nil {
		return nil, fmt.Errorf("cannot reach %s: %w", srv.book.Name(p), err)
	}
	defer s.Close()
	if err := s.Scope().SetService(protocols.ServiceTrace); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.SetDeadline(time.Now().Add(traceTimeout))
	fw := protocols.NewFrameWriter(s, maxTraceQueryBytes)
	if err := fw.Write(&pb.TraceQuery{Origin: []byte(origin), OriginVersion: version}); err != nil {
		_ = s.Reset()
		return nil, err
	}
	if err := fw.Flush(); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.CloseWrite()
	a := &pb.TraceAnswer{}
	if err := protocols.NewFrameReader(s, maxTraceAnswerBytes).Read(a); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("read %s's answer: %w", srv.book.Name(p), err)
	}
	return a, nil
}

// PlantUML renders the trace as a sequence diagram with the real times
// (offsets from the commit), renderable by `make diagrams`.
func (r TraceReport) PlantUML() string {
	var b strings.Builder
	esc := func(s string) string { return strings.NewReplacer(`"`, "'", "\n", " ").Replace(s) }
	fmt.Fprintf(&b, "@startuml\n' ferry trace %s/%d, taken %s\n", r.Origin, r.Version, r.TracedAt.Format(time.RFC3339))
	title := fmt.Sprintf("Change %s/%d", r.OriginName, r.Version)
	if r.Kind != "" {
		title += " (" + r.Kind
		if r.DataType != "" {
			title += " " + r.DataType
		}
		title += ")"
	}
	fmt.Fprintf(&b, "title %s\nhide footbox\n", esc(title))
	alias := map[int]string{}
	for i, nd := range r.Nodes {
		alias[i] = fmt.Sprintf("n%d", i)
		label := nd.Name
		if nd.Role == "origin" {
			label += " (origin)"
		}
		fmt.Fprintf(&b, "participant \"%s\" as n%d\n", esc(label), i)
	}
	appsDone := map[int]bool{}
	for i, nd := range r.Nodes {
		if nd.Published != "" {
			fmt.Fprintf(&b, "participant \"apps on %s\" as a%d\n", esc(nd.Name), i)
			appsDone[i] = true
		}
	}
	t0 := r.CommittedAt
	off := func(t time.Time) string {
		if t.IsZero() {
			return "time not known"
		}
		if t0.IsZero() {
			return t.Format("15:04:05.000")
		}
		return "+" + fmtOffset(t.Sub(t0))
	}
	if len(r.Nodes) > 0 && r.Nodes[0].Role == "origin" {
		o := r.Nodes[0]
		switch {
		case o.AskError != "":
			fmt.Fprintf(&b, "note over n0 : not reachable: %s\n", esc(o.AskError))
		default:
			fmt.Fprintf(&b, "n0 -> n0 : committed as version %d\\n%s UTC\n", r.Version, r.CommittedAt.Format("2006-01-02 15:04:05.000"))
		}
	}
	// Receivers in the order they applied the change; unknown times last.
	idx := []int{}
	for i, nd := range r.Nodes {
		if nd.Role == "receiver" {
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, c int) int {
		x, y := r.Nodes[a].AppliedAt, r.Nodes[c].AppliedAt
		switch {
		case x.IsZero() && y.IsZero():
			return 0
		case x.IsZero():
			return 1
		case y.IsZero():
			return -1
		}
		return x.Compare(y)
	})
	hasOrigin := len(r.Nodes) > 0 && r.Nodes[0].Role == "origin" && r.Nodes[0].AskError == ""
	for _, i := range idx {
		nd := r.Nodes[i]
		a := alias[i]
		if hasOrigin {
			switch {
			case nd.Ack == "pending" && nd.Attempts == 0:
				fmt.Fprintf(&b, "n0 ->x %s : not sent yet (pending)\n", a)
			case nd.Ack == "pending":
				line := fmt.Sprintf("sent, %d attempt(s), no ack yet", nd.Attempts)
				if !nd.NextAttemptAt.IsZero() {
					line += "\\nnext attempt " + nd.NextAttemptAt.Format("15:04:05")
				}
				if nd.Error != "" {
					line += "\\nlast error: " + nd.Error
				}
				fmt.Fprintf(&b, "n0 ->x %s : %s\n", a, esc(line))
			default:
				fmt.Fprintf(&b, "n0 -> %s : sent\n", a)
			}
		}
		switch {
		case nd.AskError != "":
			fmt.Fprintf(&b, "note over %s : could not be asked: %s\n", a, esc(nd.AskError))
		case !nd.Held:
			fmt.Fprintf(&b, "note over %s : does not hold the change\n", a)
		default:
			fmt.Fprintf(&b, "%s -> %s : applied as version %d (%s)\n", a, a, nd.LocalVersion, off(nd.AppliedAt))
			if nd.Published != "" {
				fmt.Fprintf(&b, "%s -> a%d : %s\n", a, i, esc(nd.Published))
			}
		}
		if hasOrigin {
			switch nd.Ack {
			case "sended":
				fmt.Fprintf(&b, "%s --> n0 : ack (sended)\n", a)
			case "rejected":
				fmt.Fprintf(&b, "%s --> n0 : refused: %s\n", a, esc(nd.Error))
			}
		}
	}
	if len(idx) == 0 && hasOrigin {
		b.WriteString("note over n0 : no receivers: the change is owed to no one\n")
	}
	b.WriteString("@enduml\n")
	return b.String()
}

func fmtOffset(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
	return d.Round(time.Millisecond).String()
}
