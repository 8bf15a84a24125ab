package natsbridge

import (
	"encoding/json"
	"slices"
	"strconv"
)

// appendFlat encodes a reply whose values are all strings of plain ASCII,
// integers, booleans or JSON encoded already (the answer to a propagate:
// ok, id, version, receivers) the way encoding/json does, keys sorted,
// without reflection.
// ok is false for anything else; the caller then uses encoding/json.
func appendFlat(b []byte, m map[string]any, withOK bool) ([]byte, bool) {
	if len(m) > 15 {
		return b, false
	}
	var keys [16]string
	ks := keys[:0]
	for k := range m {
		if !plain(k) || (withOK && k == "ok") {
			return b, false
		}
		ks = append(ks, k)
	}
	if withOK {
		ks = append(ks, "ok")
	}
	slices.Sort(ks)
	b = append(b, '{')
	for i, k := range ks {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, '"', ':')
		if withOK && k == "ok" {
			b = append(b, "true"...)
			continue
		}
		switch v := m[k].(type) {
		case string:
			if !plain(v) {
				return b, false
			}
			b = append(b, '"')
			b = append(b, v...)
			b = append(b, '"')
		case bool:
			b = strconv.AppendBool(b, v)
		case int:
			b = strconv.AppendInt(b, int64(v), 10)
		case int64:
			b = strconv.AppendInt(b, v, 10)
		case uint64:
			b = strconv.AppendUint(b, v, 10)
		case uint32:
			b = strconv.AppendUint(b, uint64(v), 10)
		case json.RawMessage:
			// Encoded already by the caller (a list of receivers), who
			// vouches for it: valid JSON, compact, no HTML escaping.
			b = append(b, v...)
		default:
			return b, false
		}
	}
	return append(b, '}'), true
}

// flatSize is about what appendFlat writes for m (exact for strings and
// encoded values, 20 bytes a number), so that one allocation holds it.
func flatSize(m map[string]any) int {
	n := 16 // braces, "ok":true
	for k, v := range m {
		n += len(k) + 4
		switch v := v.(type) {
		case string:
			n += len(v) + 2
		case json.RawMessage:
			n += len(v)
		default:
			n += 20
		}
	}
	return n
}

// plain reports whether s is printable ASCII that JSON takes as it is.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Encode is an event's body as Publish sends it: compact JSON without HTML
// escaping (the events stream stores the same bytes).
func Encode(v any) ([]byte, error) { return encode(v) }
