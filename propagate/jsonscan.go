package propagate

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Resource documents are scanned, not decoded: the node needs only the
// top-level "id" and "creator_id" members, and building a map of every
// member (then encoding it again) was the largest JSON cost on the hot path.

// topLevel finds the raw values of the named top-level members of a JSON
// object. It reports ok=false when doc is not a JSON object. Duplicate
// members keep the last value, as encoding/json does.
func topLevel(doc []byte, names ...string) (vals [][]byte, ok bool) {
	if !json.Valid(doc) {
		return nil, false
	}
	vals = make([][]byte, len(names))
	i := skipSpace(doc, 0)
	if i >= len(doc) || doc[i] != '{' {
		return nil, false
	}
	i = skipSpace(doc, i+1)
	if i < len(doc) && doc[i] == '}' {
		return vals, true
	}
	for i < len(doc) {
		kEnd := stringEnd(doc, i)
		key := doc[i:kEnd]
		i = skipSpace(doc, kEnd)
		i = skipSpace(doc, i+1) // ':'
		vEnd := valueEnd(doc, i)
		for n, name := range names {
			if keyEquals(key, name) {
				vals[n] = doc[i:vEnd]
			}
		}
		i = skipSpace(doc, vEnd)
		if doc[i] == '}' {
			return vals, true
		}
		i = skipSpace(doc, i+1) // ','
	}
	return nil, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index after the string starting at b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// valueEnd returns the index after the value starting at b[i] (doc is valid).
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = stringEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && !bytes.ContainsRune([]byte(",}] \t\n\r"), rune(b[j])) {
		j++
	}
	return j
}

// keyEquals compares a raw JSON string (with quotes) to name.
func keyEquals(raw []byte, name string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return len(raw) == len(name)+2 && string(raw[1:len(raw)-1]) == name
	}
	s, err := strconv.Unquote(string(raw))
	return err == nil && s == name
}

// jsonString decodes a raw JSON string value; ok is false for other values.
func jsonString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// idText reads an id value: a non-empty string, or a number taken as its text.
func idText(raw []byte) (string, bool) {
	if s, ok := jsonString(raw); ok {
		return s, s != ""
	}
	if len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')) {
		return string(raw), true
	}
	return "", false
}

// appendQuoted appends s as a JSON string: printable ASCII without quotes
// or backslashes (peer ids, member names) as it is, anything else through
// encoding/json (strconv's Go escapes such as \x01 are not JSON).
func appendQuoted(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// withMember returns doc (a JSON object) with a member added at its start.
func withMember(doc []byte, name, value string) []byte {
	i := bytes.IndexByte(doc, '{')
	rest := bytes.TrimLeft(doc[i+1:], " \t\r\n")
	out := make([]byte, 0, len(doc)+len(name)+len(value)+8)
	out = append(out, '{')
	out = appendQuoted(out, name)
	out = append(out, ':')
	out = appendQuoted(out, value)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}
