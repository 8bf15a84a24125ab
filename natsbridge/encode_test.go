package natsbridge

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestFlatRepliesMatchEncodingJSON: the reflection-free encoder writes the
// bytes encoding/json writes, and leaves to it what it cannot.
func TestFlatRepliesMatchEncodingJSON(t *testing.T) {
	cases := []struct {
		m    map[string]any
		flat bool
	}{
		{map[string]any{"ok": true, "id": "vm-1", "version": uint64(1795961846557355), "receivers": 3}, true},
		{map[string]any{"ok": true, "id": "vm-1", "version": uint64(1795961846557355),
			"receivers": json.RawMessage(`[{"id":"12D3KooWA","name":"B"},{"id":"12D3KooWC","name":"<C>"}]`)}, true},
		{map[string]any{"ok": false, "n": int64(-4), "u": uint32(7)}, true},
		{map[string]any{}, true},
		{map[string]any{"ok": true, "id": "<b>&"}, true},
		{map[string]any{"ok": true, "id": "é"}, false},
		{map[string]any{"ok": true, "id": "a\"b"}, false},
		{map[string]any{"ok": true, "id": "a\nb"}, false},
		{map[string]any{"ok": true, "f": 1.5}, false},
		{map[string]any{"ok": true, "l": []string{"a"}}, false},
		{map[string]any{"o\"k": true}, false},
	}
	for _, c := range cases {
		got, ok := appendFlat(nil, c.m, false)
		if ok != c.flat {
			t.Errorf("%v: flat %v, want %v", c.m, ok, c.flat)
			continue
		}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(c.m); err != nil {
			t.Fatal(err)
		}
		if ok && string(got) != string(bytes.TrimRight(want.Bytes(), "\n")) {
			t.Errorf("flat %s, encoding/json %s", got, want.Bytes())
		}
		if ok && len(got)+len(`,"ok":true`) > flatSize(c.m) {
			t.Errorf("flat %s: %d bytes, more than flatSize's %d", got, len(got), flatSize(c.m))
		}
		if enc, err := encode(c.m); err != nil || string(enc) != string(bytes.TrimRight(want.Bytes(), "\n")) {
			t.Errorf("encode %s %v, encoding/json %s", enc, err, want.Bytes())
		}
		if c.m["ok"] != true {
			continue
		}
		// Reply.OK's form: the fields without "ok", which the encoder
		// adds in its sorted place.
		fields := map[string]any{}
		for k, v := range c.m {
			if k != "ok" {
				fields[k] = v
			}
		}
		if enc, err := encode(okReply(fields)); err != nil || string(enc) != string(bytes.TrimRight(want.Bytes(), "\n")) {
			t.Errorf("encode(okReply) %s %v, encoding/json %s", enc, err, want.Bytes())
		}
	}
}
