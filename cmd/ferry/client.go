package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	// peer is the home's node; an answer from any other node is refused
	// ("" skips the check: the demo talks to nodes it started itself).
	peer peer.ID
	home string
}

// errNotRunning says the home's node does not answer.
var errNotRunning = errors.New("node is not running")

func (g *globals) client() (*client, error) {
	h := g.homeDir()
	token, err := h.Token()
	if err != nil {
		return nil, fmt.Errorf("%w (is %s a node home? run `ferry init` or pass --home)", err, h.Dir)
	}
	key, err := h.Identity()
	if err != nil {
		return nil, fmt.Errorf("%w (is %s a node home? run `ferry init` or pass --home)", err, h.Dir)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	// Only the address the running node wrote: never the configured
	// default, where another node may answer.
	b, err := os.ReadFile(filepath.Join(h.Dir, node.AdminAddrFile))
	addr := strings.TrimSpace(string(b))
	if err != nil || addr == "" {
		return nil, fmt.Errorf("%w: %s has no %s (start it with `ferry run --home %s`)", errNotRunning, h.Dir, node.AdminAddrFile, h.Dir)
	}
	return &client{base: "http://" + addr, token: token, http: &http.Client{Timeout: 60 * time.Second}, peer: id, home: h.Dir}, nil
}

// apiError is an error answer of the admin API.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return e.Message + " (" + e.Code + ")" }

// request sends a request and checks that the home's node answered.
func (c *client) request(method, path string, body any) (*http.Response, error) {
	return c.requestBody(context.Background(), method, path, body)
}

func (c *client) requestCtx(ctx context.Context, method, path string) (*http.Response, error) {
	return c.requestBody(ctx, method, path, nil)
}

func (c *client) requestBody(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if c.peer != "" {
			return nil, fmt.Errorf("%w: nothing answers at %s, the address %s/%s names (did it crash? `ferry run --home %s` starts it)",
				errNotRunning, c.base, c.home, node.AdminAddrFile, c.home)
		}
		return nil, fmt.Errorf("cannot reach the node's admin API at %s: %w", c.base, err)
	}
	if got := resp.Header.Get(node.PeerHeader); c.peer != "" && got != c.peer.String() {
		resp.Body.Close()
		who := "something that is not a Ferry node"
		if got != "" {
			who = "another node (" + got + ")"
		}
		return nil, fmt.Errorf("%w: %s answers at %s, not this home's node %s (the home's %s is stale)",
			errNotRunning, who, c.base, c.peer, node.AdminAddrFile)
	}
	return resp, nil
}

// call sends a request and decodes the answer's fields into out.
func (c *client) call(method, path string, body any, out any) error {
	resp, err := c.request(method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
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
