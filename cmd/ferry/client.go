package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrynet/ferry/node"
)

// client calls the local node's admin API.
type client struct {
	base  string
	token string
	http  *http.Client
}

func (g *globals) client() (*client, error) {
	h := g.homeDir()
	token, err := h.Token()
	if err != nil {
		return nil, fmt.Errorf("%w (is %s a node home? run `ferry init` or pass --home)", err, h.Dir)
	}
	addr := ""
	if b, err := os.ReadFile(filepath.Join(h.Dir, node.AdminAddrFile)); err == nil {
		addr = strings.TrimSpace(string(b))
	}
	if addr == "" {
		cfg, err := h.LoadConfig()
		if err != nil {
			return nil, err
		}
		addr = cfg.Admin.Listen
	}
	return &client{base: "http://" + addr, token: token, http: &http.Client{Timeout: 60 * time.Second}}, nil
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
		return fmt.Errorf("cannot reach the node's admin API at %s (is `ferry run` running?): %w", c.base, err)
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
