package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/node"
)

// client calls the local node's admin API.
type client struct {
	base  string
	token string
	http  *http.Client
	home  string
	peer  string // the home's peer id: an answer from another node is refused
}

// errNotRunning is the answer for a home whose node does not run.
var errNotRunning = errors.New("node is not running")

// client finds the home's running node through admin.addr, which the node
// writes when its admin API listens and removes when it stops. There is no
// fallback to admin.listen: a stopped node's home must never reach another
// node that listens there.
func (g *globals) client() (*client, error) {
	h := g.homeDir()
	token, err := h.Token()
	if err != nil {
		return nil, fmt.Errorf("%w (is %s a node home? run `ferry init` or pass --home)", err, h.Dir)
	}
	b, err := os.ReadFile(filepath.Join(h.Dir, node.AdminAddrFile))
	addr := strings.TrimSpace(string(b))
	if errors.Is(err, os.ErrNotExist) || (err == nil && addr == "") {
		return nil, fmt.Errorf("%w in %s (no %s; start it with `ferry run --home %s`)", errNotRunning, h.Dir, node.AdminAddrFile, h.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", node.AdminAddrFile, err)
	}
	c := &client{base: "http://" + addr, token: token, http: &http.Client{Timeout: 60 * time.Second}, home: h.Dir}
	if key, err := h.Identity(); err == nil {
		if id, err := peer.IDFromPrivateKey(key); err == nil {
			c.peer = id.String()
		}
	}
	return c, nil
}

// apiError is an error answer of the admin API.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return e.Message + " (" + e.Code + ")" }

// call sends a request and decodes the answer's fields into out.
func (c *client) call(method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w in %s: nothing answers at %s (%s is left from a node that did not stop cleanly)", errNotRunning, c.home, c.base, node.AdminAddrFile)
		}
		return fmt.Errorf("cannot reach the node's admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if got := resp.Header.Get(node.PeerIDHeader); c.peer != "" && got != c.peer {
		return fmt.Errorf("%w in %s: the admin API at %s belongs to another node (peer %q, not %s)", errNotRunning, c.home, c.base, got, c.peer)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		OK    bool      `json:"ok"`
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("admin API answered %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	if !env.OK {
		if env.Error != nil {
			return env.Error
		}
		return errors.New("admin API refused the call")
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// listAll reads every page of a paged listing (limit=MaxPageLimit, then
// after=<next> until no next) and returns the rows of field.
func listAll[T any](c *client, path string, q url.Values, field string) ([]T, error) {
	if q == nil {
		q = url.Values{}
	}
	q.Set("limit", strconv.Itoa(node.MaxPageLimit))
	all := []T{}
	for {
		var page map[string]json.RawMessage
		if err := c.call("GET", path+"?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		var rows []T
		if raw, ok := page[field]; ok {
			if err := json.Unmarshal(raw, &rows); err != nil {
				return nil, fmt.Errorf("admin API: %s: %w", field, err)
			}
		}
		all = append(all, rows...)
		var next string
		if raw, ok := page["next"]; ok {
			_ = json.Unmarshal(raw, &next)
		}
		if next == "" {
			return all, nil
		}
		q.Set("after", next)
	}
}
