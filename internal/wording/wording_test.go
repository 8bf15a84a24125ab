package wording_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wording"
)

type changes struct {
	Since uint64 `json:"since"`
	Limit int    `json:"limit"`
}

type submit struct {
	Type    string            `json:"type"`
	TableID uint64            `json:"table_id"`
	Data    json.RawMessage   `json:"data"`
	Set     map[string]string `json:"set,omitempty"`
	Peers   []string          `json:"peer_ids"`
	Ratio   *float64          `json:"ratio"`
	Flag    bool              `json:"flag"`
	Nested  struct {
		Depth int `json:"depth"`
	} `json:"nested"`
}

// TestDecodeJSONSaysWhatIsWrong: every kind of bad body gets a message
// naming the field, what it must be and what it was, and nothing of Go.
func TestDecodeJSONSaysWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		body   string
		v      any
		within string
		want   string
	}{
		{`{"since":-1}`, &changes{}, "", "`since` must be a non-negative integer, got -1"},
		{`{"since":"5"}`, &changes{}, "", "`since` must be a non-negative integer, got \"5\""},
		{`{"since":1.5}`, &changes{}, "", "`since` must be a non-negative integer, got 1.5"},
		{`{"since":true}`, &changes{}, "", "`since` must be a non-negative integer, got true"},
		{`{"limit":[1]}`, &changes{}, "", "`limit` must be an integer, got [1]"},
		{`{"sinc":5}`, &changes{}, "", "unknown field `sinc` (did you mean `since`?)"},
		{`{"x":5}`, &changes{}, "", "unknown field `x`; the fields are `since`, `limit`"},
		{`[1]`, &changes{}, "", "the body must be a JSON object, got [1]"},
		{`"x"`, &changes{}, "", `the body must be a JSON object, got "x"`},
		{``, &changes{}, "", "the body is empty; it must be a JSON object"},
		{`nope`, &changes{}, "", "the body is not valid JSON: invalid character 'o' in literal null (expecting 'u') (at byte 2)"},
		{`{"since":1}{}`, &changes{}, "", "the body is not valid JSON: invalid character '{' after top-level value (at byte 12)"},
		{`{"since":`, &changes{}, "", "the body is not valid JSON: unexpected end of JSON input (at byte 9)"},
		{`{"table_id":-3}`, &submit{}, "", "`table_id` must be a non-negative integer, got -3"},
		{`{"set":{"a":1}}`, &submit{}, "", "`set` must be an object whose values are strings, got {\"a\":1}"},
		{`{"peer_ids":"x"}`, &submit{}, "", "`peer_ids` must be an array of strings, got \"x\""},
		{`{"peer_ids":[1]}`, &submit{}, "", "`peer_ids` must be an array of strings, got [1]"},
		{`{"ratio":"half"}`, &submit{}, "", "`ratio` must be a number, got \"half\""},
		{`{"flag":"yes"}`, &submit{}, "", "`flag` must be true or false, got \"yes\""},
		{`{"nested":{"depth":"deep"}}`, &submit{}, "", "`nested.depth` must be an integer, got \"deep\""},
		{`{"Type":5}`, &submit{}, "", "`type` must be a string, got 5"},
		{`{"tpye":"insert"}`, &submit{}, "", "unknown field `tpye` (did you mean `type`?)"},
		{`{"limit":"a"}`, &changes{}, "payload", "`payload.limit` must be an integer, got \"a\""},
		{`{"limt":3}`, &changes{}, "payload", "unknown field `payload.limt` (did you mean `payload.limit`?)"},
		{`[1]`, &changes{}, "payload", "`payload` must be a JSON object, got [1]"},
		{`{"since":"` + strings.Repeat("x", 100) + `"}`, &changes{}, "", "`since` must be a non-negative integer, got \"" + strings.Repeat("x", 39) + "…"},
	} {
		err := wording.DecodeJSON([]byte(tc.body), tc.v, tc.within)
		if err == nil {
			t.Errorf("%s: accepted", tc.body)
			continue
		}
		if !errors.Is(err, ferry.ErrBadRequest) {
			t.Errorf("%s: %v does not wrap ErrBadRequest", tc.body, err)
		}
		msg := strings.TrimPrefix(err.Error(), ferry.ErrBadRequest.Error()+": ")
		if msg != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.body, msg, tc.want)
		}
		if g := wording.GoInternals(err.Error()); g != "" {
			t.Errorf("%s: %q speaks Go (%q)", tc.body, err, g)
		}
	}
	// Good input decodes as encoding/json would, names matched without case.
	var c changes
	if err := wording.DecodeJSON([]byte(` {"Since": 7, "limit": 2} `), &c, ""); err != nil || c.Since != 7 || c.Limit != 2 {
		t.Fatalf("good input: %v %+v", err, c)
	}
}

// TestGoInternals: the check finds what only Go programmers read, and
// lets ordinary messages through.
func TestGoInternals(t *testing.T) {
	for _, m := range []string{
		"json: cannot unmarshal number -1 into Go struct field ChangesRequest.since of type uint64",
		"cannot unmarshal array into Go value of type propagate.Request",
		"yaml: unmarshal errors:\n  line 2: field netwrok not found in type node.Config",
		"line 3: cannot unmarshal !!str `abc` into int",
		"value is interface {}",
		"want map[string]string",
		"want []string",
		"got *node.Config",
		"%!v(MISSING)",
		"field is <nil>",
		"type int64",
	} {
		if wording.GoInternals(m) == "" {
			t.Errorf("%q passed the check", m)
		}
	}
	// What the user sent, quoted back, is theirs.
	if g := wording.GoInternals(`unknown action: "uint64"`, `{"action":"uint64"}`); g != "" {
		t.Errorf("an echoed input was flagged: %q", g)
	}
	if g := wording.GoInternals(`unknown action: "uint64" of type float64`, `{"action":"uint64"}`); g != "float64" {
		t.Errorf("echo check: %q, want float64", g)
	}
	for _, m := range []string{
		"bad request: `since` must be a non-negative integer, got -1",
		"/tmp/TestX/001/ferry.yaml:3: unknown key `nats.prefx` (did you mean `nats.prefix`?)",
		"`listen` must be a list of multiaddrs, got a number (5)",
		"not the owner: vm \"vm2\" is A's (12D3KooWRBcq4v1EYgu7N4ny4mMX8LgeJK3zPQq42oh45Lc9oCJc)",
		"data_type \"a.b\" must be 1-64 letters, digits, '_' or '-'",
		"home /x is in use by ferry run (pid 1234, node A, started 12:00:01 UTC)",
		"payload.id must be a non-empty string or a number; printable text",
		"the body is not valid JSON: invalid character 'o' in literal null (expecting 'u') (at byte 2)",
	} {
		if g := wording.GoInternals(m); g != "" {
			t.Errorf("%q flagged for %q", m, g)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"name", "network", "listen", "bootstrap", "partners", "members", "reviewer"}
	for word, want := range map[string]string{
		"netwrok": "network", "lisen": "listen", "Name": "name", "partner": "partners",
		"bootstraps": "bootstrap", "zzz": "", "membres": "members", "x": "", "review": "reviewer", "boot": "bootstrap",
	} {
		if got := wording.Suggest(word, keys); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", word, got, want)
		}
	}
}
