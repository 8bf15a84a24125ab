package ferry

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckJSONDepth(t *testing.T) {
	nest := func(n int, open, close string) string { return strings.Repeat(open, n) + strings.Repeat(close, n) }
	for _, tc := range []struct {
		name string
		doc  string
		ok   bool
	}{
		{"flat", `{"a":1,"b":[1,2,3]}`, true},
		{"64 arrays", nest(64, "[", "]"), true},
		{"65 arrays", nest(65, "[", "]"), false},
		{"9000 arrays", nest(9000, "[", "]"), false},
		{"65 objects", strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65), false},
		{"brackets in strings", `{"a":"` + strings.Repeat("[{", 200) + `"}`, true},
		{"escaped quote", `{"a":"\"` + strings.Repeat("[", 100) + `"}`, true},
		{"escaped backslash then quote", `{"a":"\\"}` + nest(65, "[", "]"), false},
		{"unterminated string", `{"a":"[[[[`, true},
	} {
		err := CheckJSONDepth([]byte(tc.doc))
		if tc.ok != (err == nil) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err != nil && (!errors.Is(err, ErrBadRequest) || Code(err) != CodeBadRequest) {
			t.Errorf("%s: %v is not a bad_request", tc.name, err)
		}
	}
}

func FuzzCheckJSONDepth(f *testing.F) {
	f.Add([]byte(`{"a":[1,{"b":"]"}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		_ = CheckJSONDepth(doc)
	})
}
