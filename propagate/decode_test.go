package propagate

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ferrynet/ferry"
)

// sameAsSlowPath checks DecodeRequest against the strict decoder and the
// checks it replaces: whenever the one-pass scan takes a body, decodeSlow
// takes it too with the same fields, the payload passes the depth check, and what
// the scan found in the payload is what checkResource finds.
func sameAsSlowPath(t *testing.T, body []byte) (fast bool) {
	t.Helper()
	got, ok := DecodeRequest(body)
	want, slowErr := decodeSlow(body)
	if !ok {
		return false
	}
	if slowErr != nil {
		t.Fatalf("%q: the scan took a body the strict decoder refuses (%v)", body, slowErr)
	}
	if got.Action != want.Action || got.DataType != want.DataType || got.IdempotencyKey != want.IdempotencyKey || !bytes.Equal(got.Payload, want.Payload) {
		t.Fatalf("%q: scan %+v, encoding/json %+v", body, got, want)
	}
	if (got.Payload == nil) != (got.scan == nil) {
		t.Fatalf("%q: payload %q with scan %v", body, got.Payload, got.scan)
	}
	if got.Payload == nil {
		return true
	}
	if err := ferry.CheckJSONDepth(got.Payload); err != nil {
		t.Fatalf("%q: the scan took a payload the depth check refuses: %v", body, err)
	}
	if got.scan.object {
		id1, c1, err1 := checkScanned(got)
		id2, c2, err2 := checkResource(got.Payload)
		if vals, ok := topLevel(got.Payload, "id", "creator_id"); ok {
			id3, c3, err3 := resourceID(vals[0], vals[1])
			if id3 != id2 || !bytes.Equal(c3, c2) || (err3 == nil) != (err2 == nil) {
				t.Fatalf("%q: checkResource id %q creator %q err %v; topLevel id %q creator %q err %v", body, id2, c2, err2, id3, c3, err3)
			}
		}
		if id1 != id2 || !bytes.Equal(c1, c2) || (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("%q: scanned id %q creator %q err %v; checkResource id %q creator %q err %v", body, id1, c1, err1, id2, c2, err2)
		}
	}
	return true
}

func TestDecodeRequestMatchesEncodingJSON(t *testing.T) {
	deep := strings.Repeat("[", ferry.MaxJSONDepth) + strings.Repeat("]", ferry.MaxJSONDepth)
	tooDeep := "[" + deep + "]"
	cases := []struct {
		body string
		fast bool // the common shape: the scan takes it
	}{
		{`{"action":"create","data_type":"vm","payload":{"id":"a","x":[1,2.5e3,-0.1,true,false,null,"s\"q"]}}`, true},
		{` { "action" : "update" , "data_type" : "vm" , "payload" : { "id" : 7 , "creator_id" : "me" } } `, true},
		{`{"action":"create","data_type":"vm","payload":{"id":"a"},"idempotency_key":"k-1"}`, true},
		{`{"action":"create","data_type":"vm","payload":{"id":"a"},"other":{"deep":[{}]}}`, false}, // refused by name
		{`{"action":"create","data_type":"vm","payload":{"id":"a","id":"b"}}`, true},
		{`{"action":"create","data_type":"vm","payload":{"i\u0064":"a"}}`, true},
		{`{"action":"create","data_type":"vm","payload":[1,2]}`, true},
		{`{"action":"create","data_type":"vm","payload":null}`, true},
		{`{"action":"create","data_type":"vm","payload":"x"}`, true},
		{`{"action":"create","data_type":"vm","payload":` + deep + `}`, true},
		{`{"action":"create","data_type":"vm"}`, true},
		{`{"action":"create","data_type":"vm","payload":{"id":"é","n":"日本"}}`, true},
		{`{}`, true},
		{`{"action":"cr\u0065ate","data_type":"vm","payload":{}}`, false},
		{`{"Action":"create","data_type":"vm","payload":{}}`, false},
		{`{"action":1,"data_type":"vm","payload":{}}`, false},
		{`{"action":null,"data_type":"vm","payload":{}}`, false},
		{`{"action":"create","data_type":"vm","payload":` + tooDeep + `}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":"a"}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":"a"}}x`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":01}}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":1.}}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":"a` + "\x01" + `"}}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":"a` + "\xff" + `"}}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":"\x"}}`, false},
		{`{"action":"create","data_type":"vm","payload":{"id":tru}}`, false},
		{`{"action":"create",}`, false},
		{`[1]`, false},
		{``, false},
		{`not json`, false},
	}
	for _, c := range cases {
		if fast := sameAsSlowPath(t, []byte(c.body)); fast != c.fast {
			t.Errorf("%q: scan took it: %v, want %v", c.body, fast, c.fast)
		}
	}
}

// FuzzDecodeRequest: whatever the body, the scan never disagrees with
// the strict decoder and the checks it replaces.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"action":"create","data_type":"vm","payload":{"id":"a","creator_id":"x","n":[1,{"b":null}]}}`,
		`{"action":"update","data_type":"vm","payload":{"id":12e3},"idempotency_key":"k"}`,
		`{"payload":[[[[]]]],"action":"delete"}`,
		`{"action":"create","data_type":"vm","payload":{"i\u0064":"\ud83d\ude00"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { sameAsSlowPath(t, body) })
}

// BenchmarkDecodeRequest reads the create the benchmarks send: a 256-byte
// payload, {"id":...,"pad":"xxx..."}.
//
//	go test ./propagate/ -run '^$' -bench DecodeRequest -benchmem
func BenchmarkDecodeRequest(b *testing.B) {
	body := []byte(`{"action":"create","data_type":"orders","payload":{"id":"r-0000001234","pad":"` +
		strings.Repeat("x", 256-len(`{"id":"r-0000001234","pad":""}`)) + `"}}`)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, ok := DecodeRequest(body); !ok {
			b.Fatal("not taken")
		}
	}
}

// FuzzPlainRun holds the eight-bytes-at-a-time run to the byte-by-byte one.
func FuzzPlainRun(f *testing.F) {
	for _, s := range []string{"", "abc", `abcdefghijklmnop"`, "abcdefgh\\ijk", "abcdefgh\x1fijk", "\u00e9\u00e9\u00e9\u00e9\u00e9\"", "0123456701234567\x7f\x80\xff\x20\x21"} {
		f.Add([]byte(s), 0)
	}
	f.Fuzz(func(t *testing.T, b []byte, i int) {
		if i < 0 || i > len(b) {
			return
		}
		want := i
		for want < len(b) && b[want] != '"' && b[want] != '\\' && b[want] >= 0x20 {
			want++
		}
		if got := plainRun(b, i); got != want {
			t.Fatalf("plainRun(%q, %d) = %d, want %d", b, i, got, want)
		}
	})
}
