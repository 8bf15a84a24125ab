package node_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrynet/ferry/internal/testnet"
)

// TestAdminAPIErrorsAreJSON (issue 21, point 8): a path or method the API
// lacks answers 404 in JSON with code not_found, naming the request; a
// missing or wrong token answers 401 with code unauthorized. Before, the
// first was net/http's plain text and the second said forbidden.
func TestAdminAPIErrorsAreJSON(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	code := func(b []byte) (string, string) {
		var e struct {
			OK    bool `json:"ok"`
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil || e.OK {
			t.Fatalf("not a JSON error answer: %q (%v)", b, err)
		}
		return e.Error.Code, e.Error.Message
	}
	for _, c := range []struct{ method, path string }{{"GET", "/api/v1/nope"}, {"POST", "/api/v1/status"}, {"GET", "/api/v1/requests/1/x/y"}} {
		status, b := api(t, net, 0, c.method, c.path, nil, nil)
		got, msg := code(b)
		if status != 404 || got != "not_found" || !strings.Contains(msg, c.method+" "+c.path) {
			t.Errorf("%s %s: %d %s %q", c.method, c.path, status, got, msg)
		}
	}
	resp, err := http.Get("http://" + net.Node(0).AdminAddr() + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if got, _ := code(b); resp.StatusCode != 401 || got != "unauthorized" {
		t.Fatalf("no token: %d %s", resp.StatusCode, got)
	}
	// A known call still answers.
	if status, b := api(t, net, 0, "GET", "/api/v1/status", nil, nil); status != 200 {
		t.Fatalf("status: %d %s", status, b)
	}
}
