package admin

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Paging of the admin API's listings (requests, table rows, resources,
// peers, partners; changes page by version and bytes; acks have their own
// cursor). Every listing answers at most `limit` rows (default
// DefaultPageLimit, at most MaxPageLimit) and `next`, the cursor to pass as
// `after` for the next page; no `next` means no more. The CLI pages
// through them all.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
	// changesPageBytes bounds one admin answer of changes (NATS answers are
	// bounded by the server's max payload instead).
	changesPageBytes = 8 << 20
)

// pageLimit reads ?limit=.
func pageLimit(r *http.Request) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return DefaultPageLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxPageLimit {
		return 0, badReq("limit %q must be 1-%d", s, MaxPageLimit)
	}
	return n, nil
}

// idPage reads ?after=<id>&limit= of listings in id order.
func idPage(r *http.Request) (after uint64, limit int, err error) {
	if limit, err = pageLimit(r); err != nil {
		return 0, 0, err
	}
	if s := r.URL.Query().Get("after"); s != "" {
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			return 0, 0, badReq("after %q is not an id (pass the next of the previous page)", s)
		}
	}
	return after, limit, nil
}

// idCursor is the next of an id listing ("" when there is no more).
func idCursor(next uint64) string {
	if next == 0 {
		return ""
	}
	return strconv.FormatUint(next, 10)
}

func encodeCursor(b []byte) string {
	if b == nil {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, badReq("after %q is not a cursor (pass the next of the previous page)", s)
	}
	return b, nil
}

// peersPage answers a page of PeerInfos (sorted by name, then peer id),
// all or those with a role.
func (srv *Server) peersPage(w http.ResponseWriter, r *http.Request, field, role string) {
	var rows []PeerInfo
	for _, p := range srv.PeerInfos() {
		if role == "" || p.has(role) {
			rows = append(rows, p)
		}
	}
	out, next, done := namePage(w, r, rows, func(p PeerInfo) (string, string) { return p.Name, p.PeerID })
	if !done {
		ok(w, map[string]any{field: out, "next": next})
	}
}

// namePage cuts a page (limit, after) of rows sorted by name, then peer
// id; the cursor is the last row's name and peer id. done: the request
// was refused and the error is written.
func namePage[T any](w http.ResponseWriter, r *http.Request, rows []T, key func(T) (name, id string)) (out []T, next string, done bool) {
	limit, err := pageLimit(r)
	if err != nil {
		fail(w, err)
		return nil, "", true
	}
	var name, id string
	if s := r.URL.Query().Get("after"); s != "" {
		b, err := decodeCursor(s)
		var ok bool
		if err == nil {
			name, id, ok = strings.Cut(string(b), "\n")
		}
		if !ok {
			fail(w, badReq("after %q is not a cursor (pass the next of the previous page)", s))
			return nil, "", true
		}
	}
	out = []T{}
	for _, x := range rows {
		n, i := key(x)
		if (name != "" || id != "") && (n < name || (n == name && i <= id)) {
			continue
		}
		if len(out) == limit {
			ln, li := key(out[len(out)-1])
			return out, encodeCursor([]byte(ln + "\n" + li)), false
		}
		out = append(out, x)
	}
	return out, "", false
}

// Rows lists every row of a shared table, page after page (tests and the
// demo; the admin API answers one page at a time).
func (srv *Server) Rows(table string) ([]json.RawMessage, error) {
	all := []json.RawMessage{}
	var after uint64
	for {
		rows, next, err := srv.RowsPage(table, after, MaxPageLimit)
		if err != nil {
			return nil, err
		}
		all = append(all, rows...)
		if next == 0 {
			return all, nil
		}
		after = next
	}
}

// Resources lists every resource of a data type ("" for all) held here,
// page after page (tests; the admin API answers one page at a time).
func (srv *Server) Resources(dataType string) ([]ResourceRow, error) {
	all := []ResourceRow{}
	after := ""
	for {
		rows, next, err := srv.ResourcesPage(dataType, after, MaxPageLimit)
		if err != nil {
			return nil, err
		}
		all = append(all, rows...)
		if next == "" {
			return all, nil
		}
		after = next
	}
}
