package delivery

import (
	"encoding/json"
	"strings"
	"testing"
)

const someID = "12D3KooWKpHWmM3rSf6Zm5YNgGSnbscbNpCrpfkoogwWTTr7ZoMR"

// Each malformed body is refused with a message naming the field.
func TestDecodeWaitNamesTheField(t *testing.T) {
	cases := []struct{ body, want string }{
		{`{}`, "version is missing"},
		{`{"receivers":["` + someID + `"]}`, "version is missing"},
		{`{"version":"123"}`, `version: "123" is not a version`},
		{`{"version":-1}`, "version: -1 is not a version"},
		{`{"version":0}`, "version: 0 is not a version"},
		{`{"version":1.5}`, "version: 1.5 is not a version"},
		{`{"version":1e3}`, "version: 1e3 is not a version"},
		{`{"version":null}`, "version: null is not a version"},
		{`{"version":123,"timeout_ms":-5}`, "timeout_ms: -5 is negative"},
		{`{"version":123,"timeout_ms":"5"}`, `timeout_ms: "5" is not a whole number`},
		{`{"version":123,"timeout_ms":2.5}`, "timeout_ms: 2.5 is not a whole number"},
		{`{"version":123,"timeout_ms":300001}`, "timeout_ms: 300001 is over the limit of 300000"},
		{`{"version":123,"timeout_ms":99999999999999999999}`, "timeout_ms: 99999999999999999999 is out of range"},
		{`{"version":123,"receivers":"` + someID + `"}`, "receivers: \"" + someID + "\" is not a list of peer ids"},
		{`{"version":123,"receivers":[1]}`, "receivers: [1] is not a list of peer ids"},
		{`{"version":123,"receivers":null}`, "receivers: null is not a list of peer ids"},
		{`{"version":123,"receivers":[]}`, "receivers: the list is empty"},
		{`{"version":123,"receivers":["` + someID + `","B"]}`, `receivers[1]: "B" is not a peer id`},
		{`{"version":123,"timeout":5}`, "unknown field `timeout` (did you mean `timeout_ms`?)"},
		{`{"version":123,"Version":5}`, "unknown field `Version`"},
		{`[1]`, "[1] is not a JSON object"},
		{`null`, "null is not a JSON object"},
	}
	for _, c := range cases {
		var r WaitRequest
		err := json.Unmarshal([]byte(c.body), &r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.body, err, c.want)
		}
	}
}

func TestDecodeWait(t *testing.T) {
	var r WaitRequest
	if err := json.Unmarshal([]byte(`{"version":1795961846557355}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.Version != 1795961846557355 || r.Timeout != DefaultWait || r.Receivers != nil {
		t.Fatalf("decoded %+v", r)
	}
	body := `{"version":7,"timeout_ms":0,"receivers":["` + someID + `","` + someID + `"]}`
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if r.Version != 7 || r.Timeout != 0 || len(r.Receivers) != 1 || r.Receivers[0].String() != someID {
		t.Fatalf("decoded %+v (duplicates are one receiver)", r)
	}
	if err := json.Unmarshal([]byte(`{"version":7,"timeout_ms":300000}`), &r); err != nil || r.Timeout != MaxWait {
		t.Fatalf("the longest wait: %+v %v", r, err)
	}
}

func TestDecodeStatus(t *testing.T) {
	var r StatusRequest
	if err := json.Unmarshal([]byte(`{"version":42}`), &r); err != nil || r.Version != 42 {
		t.Fatalf("%+v %v", r, err)
	}
	for body, want := range map[string]string{
		`{"version":42,"timeout_ms":5}`: "unknown field `timeout_ms`",
		`{"v":42}`:                      "unknown field `v`",
		`{}`:                            "version is missing",
	} {
		if err := json.Unmarshal([]byte(body), &r); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}

// FuzzDecodeWait: any body is refused with an error or read into a request
// within the bounds; nothing panics.
func FuzzDecodeWait(f *testing.F) {
	for _, s := range []string{`{"version":1}`, `{"version":7,"timeout_ms":0,"receivers":["` + someID + `"]}`,
		`{"version":1,"timeout_ms":-1}`, `{"version":"x"}`, `[]`, `{"version":1,"x":2}`, `{"version":18446744073709551615}`,
		`{"version":18446744073709551616}`, `{"version":1,"receivers":[]}`, `{"version":1,"timeout_ms":300000}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r WaitRequest
		if err := json.Unmarshal(b, &r); err != nil {
			return
		}
		if r.Version == 0 || r.Timeout < 0 || r.Timeout > MaxWait || (r.Receivers != nil && len(r.Receivers) == 0) ||
			len(r.Receivers) > MaxReceivers {
			t.Fatalf("%q read as %+v", b, r)
		}
		for _, p := range r.Receivers {
			if p.Validate() != nil {
				t.Fatalf("%q: receiver %q is not a peer id", b, p)
			}
		}
		var s StatusRequest
		_ = json.Unmarshal(b, &s)
	})
}
