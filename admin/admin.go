package admin

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/docs"
	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/peers"
	"github.com/ferrynet/ferry/propagate"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/search"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// AdminAddrFile holds the admin API's actual address while the node runs,
// so the CLI finds it when admin.listen asks for any port.
const AdminAddrFile = "admin.addr"

// IdempotencyKeyHeader is the admin API's header of an idempotency key
// (internal/idem).
const IdempotencyKeyHeader = "Idempotency-Key"

// PeerHeader names the node on every admin API answer, so the CLI can tell
// its home's node from another that took the address.
const PeerHeader = "Ferry-Peer-Id"

// The console: index.html, console.js and console.css, served as they are.
//
//go:embed console
var consoleFS embed.FS

// Start listens on admin.listen and serves the operator API.
func (srv *Server) Start() error {
	token, err := srv.token()
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", srv.listen)
	if err != nil {
		return fmt.Errorf("admin api: listen %s: %w", srv.listen, err)
	}
	srv.addr = l.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", srv.serveHealth(false))
	mux.HandleFunc("GET /readyz", srv.serveHealth(true))
	mux.Handle("GET /metrics", promhttp.HandlerFor(srv.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, consoleFS, "console/index.html")
	})
	mux.Handle("GET /console/", http.FileServerFS(consoleFS))
	mux.HandleFunc("GET /flows/index.json", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, docs.Diagrams())
	})
	mux.HandleFunc("GET /flows/{file}", func(w http.ResponseWriter, r *http.Request) {
		b, err := docs.SVG(r.PathValue("file"))
		if err != nil || !strings.HasSuffix(r.PathValue("file"), ".svg") {
			fail(w, fmt.Errorf("%w: no diagram %q", ferry.ErrNotFound, r.PathValue("file")))
			return
		}
		w.Header().Set("Content-Type", "image/svg+xml")
		_, _ = w.Write(b)
	})
	api := http.NewServeMux()
	srv.routes(api)
	api.HandleFunc("/api/v1/", unknownAPI)
	mux.Handle("/api/v1/", requireToken(token, api))
	srv.http = &http.Server{Handler: srv.identify(withFormat(mux)), ReadHeaderTimeout: 10 * time.Second}
	srv.g.Go(func() {
		if err := srv.http.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			srv.log.Error("admin api stopped", "err", err)
		}
	})
	srv.g.Go(srv.sampleRates)
	_ = os.WriteFile(srv.dir+"/"+AdminAddrFile, []byte(srv.addr+"\n"), 0o600)
	return nil
}

// Stop stops listening and waits (until ctx ends) for the calls in flight
// to be answered.
func (srv *Server) Stop(ctx context.Context) error {
	if srv.http == nil {
		return nil
	}
	close(srv.quit) // ends the event streams, which Shutdown would wait for
	_ = os.Remove(srv.dir + "/" + AdminAddrFile)
	if err := srv.http.Shutdown(ctx); err != nil {
		_ = srv.http.Close()
		return fmt.Errorf("admin api: calls left unanswered: %w", err)
	}
	return nil
}

// Addr is the admin API's address ("" before Start).
func (srv *Server) Addr() string { return srv.addr }

// CodeUnauthorized is the admin API's error code of a request without the
// right bearer token (HTTP 401); forbidden (403) is a request the token
// allows but the node refuses.
const CodeUnauthorized = "unauthorized"

// unknownAPI answers a path or method under /api/v1/ that the API lacks,
// in JSON like every other answer.
func unknownAPI(w http.ResponseWriter, r *http.Request) {
	fail(w, fmt.Errorf("%w: the admin API has no %s %s (see docs/operations.md, \"Admin API\")", ferry.ErrNotFound, r.Method, r.URL.Path))
}

func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
			writeJSON(w, http.StatusUnauthorized, map[string]any{"ok": false,
				"error": map[string]string{"code": CodeUnauthorized, "message": "missing or wrong bearer token (see admin.token in the node's home)"}})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (srv *Server) identify(next http.Handler) http.Handler {
	id := srv.id.String()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(PeerHeader, id)
		next.ServeHTTP(w, r)
	})
}

// jsonWriter carries the answer's format: compact JSON, or indented with
// ?pretty=1 (indenting a deeply nested document multiplies its size).
type jsonWriter struct {
	http.ResponseWriter
	pretty bool
}

// Flush passes a flush on (the event stream needs it).
func (w *jsonWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *jsonWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func withFormat(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("pretty")
		next.ServeHTTP(&jsonWriter{ResponseWriter: w, pretty: p == "1" || p == "true"}, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if jw, ok := w.(*jsonWriter); ok && jw.pretty {
		enc.SetIndent("", "  ")
	}
	_ = enc.Encode(v)
}

func ok(w http.ResponseWriter, fields map[string]any) {
	out := map[string]any{"ok": true}
	for k, v := range fields {
		out[k] = v
	}
	writeJSON(w, http.StatusOK, out)
}

func fail(w http.ResponseWriter, err error) {
	code := ferry.Code(err)
	status := map[string]int{ferry.CodeBadRequest: 400, ferry.CodeUnknownAction: 400, ferry.CodeTooLarge: 413,
		ferry.CodeNotOwner: 403, ferry.CodeForbidden: 403, ferry.CodeNotFound: 404, ferry.CodeConflict: 409,
		ferry.CodeUnavailable: 503, ferry.CodeCorrupt: 500}[code]
	writeJSON(w, status, map[string]any{"ok": false, "error": map[string]string{"code": code, "message": err.Error()}})
}

func badReq(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ferry.ErrBadRequest, fmt.Sprintf(format, args...))
}

// maxBody is the largest request body: twice the message limit and 64 KiB.
func (srv *Server) maxBody() int64 { return int64(2*srv.maxMessageBytes + (64 << 10)) }

// decode reads a JSON body of at most maxBody bytes; a larger one, whatever
// its size, is refused with 413 too_large (at most maxBody+1 bytes are read).
// An empty body leaves v as it is.
func (srv *Server) decode(r *http.Request, v any) error {
	limit := srv.maxBody()
	tooLarge := fmt.Errorf("%w: the request body is over %d bytes (2 × limits.max_message_bytes + 64 KiB)", ferry.ErrTooLarge, limit)
	if r.ContentLength > limit {
		return tooLarge
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return badReq("read body: %v", err)
	}
	if int64(len(body)) > limit {
		return tooLarge
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	// Strict, as the NATS subjects: an unknown member is refused by name,
	// a wrong type names the field (internal/wording).
	return wording.DecodeJSON(body, v, "")
}

// wait runs an asynchronous service call and waits for its answer.
func wait[T any](r *http.Request, call func(done func(T, error))) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	call(func(v T, err error) { ch <- res{v, err} })
	select {
	case x := <-ch:
		return x.v, x.err
	case <-r.Context().Done():
		var zero T
		return zero, fmt.Errorf("%w: %w", ferry.ErrUnavailable, r.Context().Err())
	}
}

func (srv *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, _ *http.Request) { ok(w, map[string]any{"status": srv.Status()}) })
	mux.HandleFunc("GET /api/v1/peers", func(w http.ResponseWriter, r *http.Request) { srv.peersPage(w, r, "peers", "") })
	mux.HandleFunc("GET /api/v1/partners", func(w http.ResponseWriter, r *http.Request) { srv.peersPage(w, r, "partners", "partner") })
	mux.HandleFunc("POST /api/v1/partners", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			PeerID string `json:"peer_id"`
			// Addr is a multiaddr ending in /p2p/<peer id>: where to dial a
			// partner that is not a Ferry node (kept; peers/partners.go).
			Addr string `json:"addr"`
		}
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		if req.Addr == "" {
			srv.partnerCall(w, r, req.PeerID, true)
			return
		}
		ai, err := peers.ParsePartner(req.Addr)
		if err != nil || !strings.HasPrefix(req.Addr, "/") {
			fail(w, badReq("addr: %q is not a multiaddr ending in /p2p/<peer id>", req.Addr))
			return
		}
		if req.PeerID != "" && req.PeerID != ai.ID.String() {
			fail(w, badReq("addr %q names peer %s, not peer_id %s", req.Addr, ai.ID, req.PeerID))
			return
		}
		srv.partnerCall(w, r, ai.ID.String(), true, ai.Addrs...)
	})
	mux.HandleFunc("DELETE /api/v1/partners/{id}", func(w http.ResponseWriter, r *http.Request) {
		srv.partnerCall(w, r, r.PathValue("id"), false)
	})
	srv.reviewerRoutes(mux)
	mux.HandleFunc("GET /api/v1/members", srv.membersPage)
	mux.HandleFunc("POST /api/v1/members", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			PeerID string `json:"peer_id"`
		}
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		srv.memberCall(w, r, req.PeerID, true)
	})
	mux.HandleFunc("DELETE /api/v1/members/{id}", func(w http.ResponseWriter, r *http.Request) {
		srv.memberCall(w, r, r.PathValue("id"), false)
	})
	mux.HandleFunc("GET /api/v1/requests", func(w http.ResponseWriter, r *http.Request) {
		after, limit, err := idPage(r)
		if err != nil {
			fail(w, err)
			return
		}
		rows, next, err := srv.review.RequestsPage(r.URL.Query().Get("status"), after, limit)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"requests": nonNil(rows), "next": idCursor(next)})
	})
	mux.HandleFunc("GET /api/v1/requests/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			fail(w, badReq("request id %q is not a number", r.PathValue("id")))
			return
		}
		d, err := srv.RequestDetail(id)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"request": d.Request, "current": d.Current, "diff": d.Diff, "receivers": d.Receivers})
	})
	mux.HandleFunc("GET /api/v1/requests/{id}/applied", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			fail(w, badReq("request id %q is not a number", r.PathValue("id")))
			return
		}
		a, err := srv.DecisionApplied(id)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"applied": a})
	})
	mux.HandleFunc("POST /api/v1/requests/{id}/{decision}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			fail(w, badReq("request id %q is not a number", r.PathValue("id")))
			return
		}
		var req review.DecideRequest
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		req.RequestID, req.Decision = id, r.PathValue("decision")
		row, err := wait(r, func(done func(review.Row, error)) { srv.review.Decide(srv.ctx, req, done) })
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"request": row})
	})
	mux.HandleFunc("GET /api/v1/acks", func(w http.ResponseWriter, r *http.Request) {
		q, err := ackQuery(r.URL.Query())
		if err != nil {
			fail(w, err)
			return
		}
		page, err := srv.Acks(q)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"acks": page.Rows, "next": page.Next})
	})
	mux.HandleFunc("GET /api/v1/deliveries", func(w http.ResponseWriter, _ *http.Request) {
		ok(w, map[string]any{"deliveries": nonNil(srv.Deliveries())})
	})
	mux.HandleFunc("GET /api/v1/rates", func(w http.ResponseWriter, _ *http.Request) {
		ok(w, map[string]any{"interval_seconds": int(RateInterval / time.Second), "rates": srv.Rates()})
	})
	mux.HandleFunc("GET /api/v1/events", srv.serveEvents)
	trace := func(w http.ResponseWriter, r *http.Request, ref string) {
		origin, ver, err := srv.ParseTraceRef(ref)
		if err != nil {
			fail(w, err)
			return
		}
		rep, err := srv.Trace(r.Context(), origin, ver)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"trace": rep, "plantuml": rep.PlantUML()})
	}
	mux.HandleFunc("GET /api/v1/trace/{origin}/{version}", func(w http.ResponseWriter, r *http.Request) {
		trace(w, r, r.PathValue("origin")+"/"+r.PathValue("version"))
	})
	// ?ref= <origin>/<version>, <data_type>/<id> or a request id.
	mux.HandleFunc("GET /api/v1/trace", func(w http.ResponseWriter, r *http.Request) {
		trace(w, r, r.URL.Query().Get("ref"))
	})
	mux.HandleFunc("GET /api/v1/tables/{name}/rows", func(w http.ResponseWriter, r *http.Request) {
		after, limit, err := idPage(r)
		if err != nil {
			fail(w, err)
			return
		}
		rows, next, err := srv.RowsPage(r.PathValue("name"), after, limit)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"table": r.PathValue("name"), "rows": rows, "next": idCursor(next)})
	})
	mux.HandleFunc("GET /api/v1/resources", func(w http.ResponseWriter, r *http.Request) {
		limit, err := pageLimit(r)
		if err != nil {
			fail(w, err)
			return
		}
		res, next, err := srv.ResourcesPage(r.URL.Query().Get("data_type"), r.URL.Query().Get("after"), limit)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"resources": res, "next": next})
	})
	mux.HandleFunc("GET /api/v1/changes", func(w http.ResponseWriter, r *http.Request) {
		var req propagate.ChangesRequest
		q := r.URL.Query()
		var err1, err2 error
		if s := q.Get("since"); s != "" {
			req.Since, err1 = strconv.ParseUint(s, 10, 64)
		}
		if s := q.Get("limit"); s != "" {
			req.Limit, err2 = strconv.Atoi(s)
		}
		if err1 != nil || err2 != nil {
			fail(w, badReq("since and limit must be numbers"))
			return
		}
		page, err := srv.prop.ChangesPage(req, changesPageBytes)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"changes": page.Changes, "next": page.Next, "more": page.More})
	})
	mux.HandleFunc("POST /api/v1/propagate", func(w http.ResponseWriter, r *http.Request) {
		var req propagate.Request
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		if err := idem.MergeKey(&req.IdempotencyKey, r.Header.Get(IdempotencyKeyHeader), IdempotencyKeyHeader); err != nil {
			fail(w, err)
			return
		}
		res, err := wait(r, func(done func(propagate.Result, error)) { srv.prop.Propagate(srv.ctx, req, done) })
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, res)
	})
	mux.HandleFunc("POST /api/v1/search", func(w http.ResponseWriter, r *http.Request) {
		var req search.CollectRequest
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		col, err := srv.search.Collect(r.Context(), req)
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"query_id": col.QueryID, "scope": col.Scope, "asked": col.Asked, "results": col.Results})
	})
	mux.HandleFunc("POST /api/v1/review/submit", func(w http.ResponseWriter, r *http.Request) {
		var req review.SubmitRequest
		if err := srv.decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		if err := idem.MergeKey(&req.IdempotencyKey, r.Header.Get(IdempotencyKeyHeader), IdempotencyKeyHeader); err != nil {
			fail(w, err)
			return
		}
		row, err := wait(r, func(done func(review.Row, error)) { srv.review.Submit(srv.ctx, req, done) })
		if err != nil {
			fail(w, err)
			return
		}
		ok(w, map[string]any{"request": row})
	})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (srv *Server) partnerCall(w http.ResponseWriter, r *http.Request, id string, on bool, addrs ...ma.Multiaddr) {
	p, err := peer.Decode(id)
	if err != nil {
		fail(w, badReq("%q is not a peer id", id))
		return
	}
	if err := srv.node.SetPartner(r.Context(), p, on, addrs...); err != nil {
		fail(w, fmt.Errorf("%w: %w", ferry.ErrBadRequest, err))
		return
	}
	kept := []string{}
	for _, a := range srv.book.PartnerAddrs()[p] {
		kept = append(kept, a.String())
	}
	ok(w, map[string]any{"peer_id": p.String(), "partner": on, "addrs": kept})
}

// Status is what `ferry status` shows.
type Status struct {
	PeerID          string    `json:"peer_id"`
	Name            string    `json:"name"`
	Network         string    `json:"network"`
	Version         string    `json:"version"`
	StartedAt       time.Time `json:"started_at"`
	Addrs           []string  `json:"addrs"`
	NATS            string    `json:"nats"`
	NATSEmbedded    bool      `json:"nats_embedded"`
	Admin           string    `json:"admin"`
	Reviewer        string    `json:"reviewer"`
	IsReviewer      bool      `json:"is_reviewer"`
	Partners        int       `json:"partners"`
	Members         int       `json:"members"`
	Connected       int       `json:"connected"`
	StoreVersion    uint64    `json:"store_version"`
	DecisionApplied uint64    `json:"decision_applied"`
	PendingAcks     int       `json:"pending_acks"`
	WaitingRequests int       `json:"waiting_requests"`
	PeersUp         int       `json:"peers_up"`   // known peers connected now
	PeersDown       int       `json:"peers_down"` // known peers not connected
	LastCatchUp     time.Time `json:"last_catch_up,omitzero"`
	// Health is what /healthz and /readyz report (Node.Health).
	Health HealthReport `json:"health"`
	// ReviewGroup is the review group as this reviewer sees it (a
	// reviewer of a group of more than one only).
	ReviewGroup *GroupStatus `json:"review_group,omitempty"`
}

// Status reports the node's state.
func (srv *Server) Status() Status {
	s := Status{PeerID: srv.id.String(), Name: srv.name, Network: srv.network, Version: srv.version, StartedAt: srv.node.StartedAt(),
		NATS: srv.nats.ClientURL(), NATSEmbedded: srv.nats.Embedded(), Admin: srv.addr, IsReviewer: srv.review.IsReviewer(),
		Partners: len(srv.book.Partners()), Members: srv.book.MemberCount(), Connected: len(srv.host.Network().Peers()),
		DecisionApplied: srv.review.Applied(), ReviewGroup: srv.groupView.get()}
	for _, a := range srv.node.Addrs() {
		s.Addrs = append(s.Addrs, a.String())
	}
	if r := srv.book.Reviewer(); r != "" {
		s.Reviewer = r.String()
	}
	s.StoreVersion, _ = srv.st.Counter(store.CtrVersion)
	s.PendingAcks = srv.pendingTotal()
	if w, err := srv.st.Requests("waiting"); err == nil {
		s.WaitingRequests = len(w)
	}
	for _, p := range srv.PeerInfos() {
		if p.Connected {
			s.PeersUp++
		} else {
			s.PeersDown++
		}
	}
	if t := srv.catchup.LastCatchUp(); !t.IsZero() {
		s.LastCatchUp = t.UTC()
	}
	s.Health = srv.node.Health()
	return s
}

// PeerInfo is a row of `ferry peers`.
type PeerInfo struct {
	PeerID    string    `json:"peer_id"`
	Name      string    `json:"name"`
	Roles     []string  `json:"roles"`
	Addrs     []string  `json:"addrs"`
	LastSeen  time.Time `json:"last_seen"`
	Connected bool      `json:"connected"`
}

func (p PeerInfo) has(role string) bool {
	for _, r := range p.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// PeerInfos lists every peer the node knows: the peer book, partners and the reviewer.
func (srv *Server) PeerInfos() []PeerInfo {
	known := map[peer.ID]*storepb.Peer{}
	for _, e := range srv.book.Entries() {
		known[peer.ID(e.Id)] = e
	}
	for _, p := range append(srv.book.Partners(), srv.book.Members()...) {
		if _, ok := known[p]; !ok {
			known[p] = &storepb.Peer{Id: []byte(p)}
		}
	}
	if r := srv.book.Reviewer(); r != "" && r != srv.id {
		if _, ok := known[r]; !ok {
			known[r] = &storepb.Peer{Id: []byte(r)}
		}
	}
	out := make([]PeerInfo, 0, len(known))
	for id, e := range known {
		pi := PeerInfo{PeerID: id.String(), Name: srv.book.Name(id), Connected: srv.host.Network().Connectedness(id) == network.Connected}
		// Last seen: now while connected, else when its last connection
		// closed (this run) or its last hello, whichever is later.
		if e.LastSeen > 0 {
			pi.LastSeen = time.Unix(e.LastSeen, 0).UTC()
		}
		if pi.Connected {
			pi.LastSeen = time.Now().UTC()
		} else if v, ok := srv.lastGone.Load(id); ok && v.(time.Time).After(pi.LastSeen) {
			pi.LastSeen = v.(time.Time).UTC()
		}
		if srv.book.IsPartner(id) {
			pi.Roles = append(pi.Roles, "partner")
		}
		if srv.book.IsMember(id) {
			pi.Roles = append(pi.Roles, "member")
		}
		if id == srv.book.Reviewer() {
			pi.Roles = append(pi.Roles, "reviewer")
		}
		if pi.Roles == nil {
			pi.Roles = []string{"stranger"}
		}
		for _, b := range e.Addrs {
			if a, err := ma.NewMultiaddrBytes(b); err == nil {
				pi.Addrs = append(pi.Addrs, a.String())
			}
		}
		if len(pi.Addrs) == 0 {
			for _, a := range srv.host.Peerstore().Addrs(id) {
				pi.Addrs = append(pi.Addrs, a.String())
			}
		}
		out = append(out, pi)
	}
	sortPeerInfos(out)
	return out
}

func sortPeerInfos(ps []PeerInfo) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && (ps[j].Name < ps[j-1].Name || (ps[j].Name == ps[j-1].Name && ps[j].PeerID < ps[j-1].PeerID)); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// RowsPage lists at most limit rows of a shared table (JSON objects with
// "id") with an id after `after`, and the id to ask after next (0: no more).
func (srv *Server) RowsPage(table string, after uint64, limit int) ([]json.RawMessage, uint64, error) {
	if !review.ValidTable(table) {
		return nil, 0, badReq("table name %q must be 1-64 letters, digits, '_' or '-'", table)
	}
	rows, next, err := srv.st.RowsPage(table, after, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	out := make([]json.RawMessage, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.JSON)
	}
	return out, next, nil
}

// ResourceRow is a row of `ferry resources`.
type ResourceRow struct {
	DataType      string          `json:"data_type"`
	ID            string          `json:"id"`
	Creator       string          `json:"creator_id"`
	Own           bool            `json:"own"`
	OriginVersion uint64          `json:"origin_version"`
	Version       uint64          `json:"version"`
	Deleted       bool            `json:"deleted"`
	Resource      json.RawMessage `json:"resource"`
}

// ResourcesPage lists at most limit resources held here, own and received
// (deleted ones too), after the cursor `after` ("" from the start), and the
// cursor of the next page ("": no more).
func (srv *Server) ResourcesPage(dataType, after string, limit int) ([]ResourceRow, string, error) {
	if dataType != "" && !propagate.ValidDataType(dataType) {
		return nil, "", badReq("data type %q must be 1-64 letters, digits, '_' or '-'", dataType)
	}
	cursor, err := decodeCursor(after)
	if err != nil {
		return nil, "", err
	}
	rs, next, err := srv.st.ResourcesPage(dataType, cursor, limit)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ferry.ErrUnavailable, err)
	}
	out := make([]ResourceRow, 0, len(rs))
	for _, r := range rs {
		creator := peer.ID(r.Creator)
		out = append(out, ResourceRow{DataType: r.DataType, ID: r.Id, Creator: creator.String(), Own: creator == srv.id,
			OriginVersion: r.OriginVersion, Version: r.Version, Deleted: r.Deleted, Resource: r.Json})
	}
	return out, encodeCursor(next), nil
}

// ackParams are GET /api/v1/acks's parameters.
var ackParams = []string{"request", "receiver", "state", "pending", "kind", "version", "before", "limit"}

// ackQuery reads GET /api/v1/acks's parameters: request, receiver, state
// (pending=1 is state=pending), kind, version, before, limit.
func ackQuery(v url.Values) (AckQuery, error) {
	for k := range v {
		if !slices.Contains(ackParams, k) {
			return AckQuery{}, badReq("unknown parameter %q of GET /api/v1/acks (it takes %s; pages go on with before=<next>)", k, strings.Join(ackParams, ", "))
		}
	}
	q := AckQuery{Receiver: v.Get("receiver"), State: v.Get("state"), Kind: v.Get("kind"), Before: v.Get("before")}
	if p := v.Get("pending"); p == "1" || p == "true" {
		if q.State != "" && q.State != "pending" {
			return q, badReq("pending and state=%s contradict each other", q.State)
		}
		q.State = "pending"
	}
	for _, f := range []struct {
		name string
		dst  *uint64
	}{{"request", &q.RequestID}, {"version", &q.Version}} {
		if s := v.Get(f.name); s != "" {
			x, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return q, badReq("%s %q is not a number", f.name, s)
			}
			*f.dst = x
		}
	}
	if s := v.Get("limit"); s != "" {
		l, err := strconv.Atoi(s)
		if err != nil || l < 0 {
			return q, badReq("limit %q is not a count", s)
		}
		q.Limit = l
	}
	return q, nil
}
