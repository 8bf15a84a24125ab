package propagate

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzTopLevel checks the scanner against encoding/json: the same documents
// are objects, and the same members have the same values.
func FuzzTopLevel(f *testing.F) {
	for _, s := range []string{`{}`, `{"id":"a"}`, `{"id":1,"creator_id":"x"}`, ` { "a" : [1,{"id":2}], "id" : "b\\"c" } `,
		`{"id":"a","id":"b"}`, `{"\u0069d":"esc"}`, `[]`, `"x"`, `{"id":{"nested":"}"}}`, `{"id":null}`, `{`, `{"a":1,}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		var m map[string]json.RawMessage
		jerr := json.Unmarshal(doc, &m)
		vals, ok := topLevel(doc, "id", "creator_id")
		if (jerr == nil && m != nil) != ok {
			t.Fatalf("object? encoding/json %v (err %v), scanner %v: %q", m != nil, jerr, ok, doc)
		}
		if !ok {
			return
		}
		for i, name := range []string{"id", "creator_id"} {
			want, has := m[name]
			if has != (vals[i] != nil) {
				t.Fatalf("member %s: encoding/json has=%v, scanner %q: %q", name, has, vals[i], doc)
			}
			if has {
				var a, b any
				_ = json.Unmarshal(want, &a)
				_ = json.Unmarshal(vals[i], &b)
				ja, _ := json.Marshal(a)
				jb, _ := json.Marshal(b)
				if !bytes.Equal(ja, jb) {
					t.Fatalf("member %s: %s vs %s in %q", name, want, vals[i], doc)
				}
			}
		}
		if vals[1] != nil {
			return // withMember is only used when creator_id is absent
		}
		added := withMember(doc, "creator_id", "peer")
		var m2 map[string]json.RawMessage
		if err := json.Unmarshal(added, &m2); err != nil || string(m2["creator_id"]) != `"peer"` {
			t.Fatalf("withMember broke %q into %q", doc, added)
		}
	})
}

// TestWithMemberQuotesAsJSON: the member added is a JSON string whatever
// its bytes (strconv's Go escapes are not JSON).
func TestWithMemberQuotesAsJSON(t *testing.T) {
	for _, v := range []string{"12D3KooWplain", "with \"quotes\" and \\", "ctl\x01", "naïve", "<tag>&"} {
		doc := withMember([]byte(`{"id":"a"}`), "creator_id", v)
		var m map[string]string
		if err := json.Unmarshal(doc, &m); err != nil {
			t.Fatalf("%q: %s is not JSON: %v", v, doc, err)
		}
		if m["creator_id"] != v || m["id"] != "a" {
			t.Fatalf("%q: read back %q", v, m)
		}
	}
}
