package propagate

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/wording"
)

// The body of <prefix>.propagate is read in one pass: the scan below checks
// that the whole body is valid JSON, finds the request's members and, when
// the payload is an object, its top-level "id" and "creator_id", and checks
// how deeply the payload nests. Before, the body went through
// json.Unmarshal, a depth scan, a validity scan and a member scan: four
// passes and a copy, the largest cost of a request at the NATS hop.
//
// The scan takes only the common shape: a JSON object of no members but
// those named exactly action, data_type, payload, idempotency_key, the
// others strings without escapes, in valid UTF-8. Anything else (escapes,
// a member named "Action", which encoding/json would match, an unknown
// member, invalid UTF-8, a body nested too deeply) is left to the strict
// decoder (decodeSlow), so the answer to unusual input is the one it always
// was, and an unknown member is refused by name.

// scanned is what the one-pass scan learnt about a request's payload.
type scanned struct {
	// object: the payload is a JSON object whose top-level member names
	// have no escapes; id and creator are their raw values (nil: absent).
	object      bool
	id, creator []byte
}

// DecodeRequest reads a propagate request body in one pass. ok is false
// when the body is not of the common shape; the caller then decodes it with
// decodeSlow (and gets its error for a malformed body).
func DecodeRequest(data []byte) (req Request, ok bool) {
	if !utf8.Valid(data) {
		return Request{}, false
	}
	s := scan{b: data}
	s.space()
	if !s.eat('{') {
		return Request{}, false
	}
	var info scanned
	s.space()
	if !s.eat('}') {
		for {
			s.space()
			key, esc, good := s.str()
			if !good || esc {
				return Request{}, false
			}
			s.space()
			if !s.eat(':') {
				return Request{}, false
			}
			s.space()
			switch string(key) {
			case "action", "data_type", "idempotency_key":
				v, esc, good := s.str()
				if !good || esc {
					return Request{}, false
				}
				switch string(key) {
				case "action":
					req.Action = string(v)
				case "data_type":
					req.DataType = string(v)
				default:
					req.IdempotencyKey = string(v)
				}
			case "payload":
				start := s.i
				info = scanned{}
				if s.i < len(s.b) && s.b[s.i] == '{' {
					if !s.object(1, &info) {
						return Request{}, false
					}
				} else if !s.value(1) {
					return Request{}, false
				}
				req.Payload = data[start:s.i]
			default:
				// A member in another case (encoding/json matches names
				// without case) or an unknown one, which the slow path
				// refuses by name.
				return Request{}, false
			}
			s.space()
			if s.eat('}') {
				break
			}
			if !s.eat(',') {
				return Request{}, false
			}
		}
	}
	s.space()
	if s.i != len(s.b) {
		return Request{}, false
	}
	if req.Payload != nil {
		req.scan = &info
	}
	return req, true
}

// RequestUsage is what a propagate request body looks like, for errors.
const RequestUsage = `{"action", "data_type", "payload", "idempotency_key"?}`

// decodeSlow reads a body the scan did not take: strictly (an unknown
// member is refused by name), with errors in the app's words.
func decodeSlow(data []byte) (Request, error) {
	var req Request
	if err := wording.DecodeJSON(data, &req, ""); err != nil {
		return Request{}, fmt.Errorf("%w (expected %s)", err, RequestUsage)
	}
	return req, nil
}

// scan is a JSON validator over b from i. Depths count the payload's own
// nesting: the payload itself is at depth 1.
type scan struct {
	b []byte
	i int
}

func (s *scan) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scan) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// plainRun returns where the run of plain string bytes (all but the quote,
// the backslash and the control characters) that starts at b[i] ends. It
// looks at eight bytes at a time: a payload is mostly such runs, and the
// receiver scans every change it applies.
func plainRun(b []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for i+8 <= len(b) {
		x := binary.LittleEndian.Uint64(b[i:])
		q, bs := x^(ones*'"'), x^(ones*'\\')
		// A byte below 0x20, or a zero byte in q or bs, sets its high bit
		// (exact as to whether any byte of the word does).
		if ((x-ones*0x20)&^x|(q-ones)&^q|(bs-ones)&^bs)&highs != 0 {
			break
		}
		i += 8
	}
	for i < len(b) && b[i] != '"' && b[i] != '\\' && b[i] >= 0x20 {
		i++
	}
	return i
}

// str reads a string at s.i and returns its contents (between the quotes)
// and whether it holds escapes.
func (s *scan) str() (v []byte, esc, ok bool) {
	if !s.eat('"') {
		return nil, false, false
	}
	start := s.i
	for s.i < len(s.b) {
		s.i = plainRun(s.b, s.i)
		if s.i >= len(s.b) {
			break
		}
		c := s.b[s.i]
		switch {
		case c == '"':
			v = s.b[start:s.i]
			s.i++
			return v, esc, true
		case c == '\\':
			esc = true
			s.i++
			if s.i >= len(s.b) {
				return nil, false, false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+5 > len(s.b) {
					return nil, false, false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !isHex(h) {
						return nil, false, false
					}
				}
				s.i += 5
			default:
				return nil, false, false
			}
		case c < 0x20:
			return nil, false, false
		default:
			s.i++
		}
	}
	return nil, false, false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// value reads any JSON value at depth.
func (s *scan) value(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(depth, nil)
	case c == '[':
		return s.array(depth)
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return false
}

func (s *scan) lit(w string) bool {
	if len(s.b)-s.i >= len(w) && string(s.b[s.i:s.i+len(w)]) == w {
		s.i += len(w)
		return true
	}
	return false
}

func (s *scan) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

func (s *scan) number() bool {
	s.eat('-')
	if s.eat('0') {
		// no more digits after a leading zero
	} else if s.digits() == 0 {
		return false
	}
	if s.eat('.') && s.digits() == 0 {
		return false
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if !s.eat('+') {
			s.eat('-')
		}
		if s.digits() == 0 {
			return false
		}
	}
	return true
}

// object reads an object at depth; with info, it notes the raw values of
// the top-level "id" and "creator_id" (the last of duplicates, as
// encoding/json keeps).
func (s *scan) object(depth int, info *scanned) bool {
	if depth > ferry.MaxJSONDepth {
		return false // the slow path names the problem
	}
	s.i++ // '{'
	plain := true
	s.space()
	if !s.eat('}') {
		for {
			s.space()
			key, esc, ok := s.str()
			if !ok {
				return false
			}
			plain = plain && !esc
			s.space()
			if !s.eat(':') {
				return false
			}
			s.space()
			start := s.i
			if !s.value(depth + 1) {
				return false
			}
			if info != nil && !esc {
				switch string(key) {
				case "id":
					info.id = s.b[start:s.i]
				case "creator_id":
					info.creator = s.b[start:s.i]
				}
			}
			s.space()
			if s.eat('}') {
				break
			}
			if !s.eat(',') {
				return false
			}
		}
	}
	if info != nil {
		info.object = plain
	}
	return true
}

func (s *scan) array(depth int) bool {
	if depth > ferry.MaxJSONDepth {
		return false
	}
	s.i++ // '['
	s.space()
	if s.eat(']') {
		return true
	}
	for {
		s.space()
		if !s.value(depth + 1) {
			return false
		}
		s.space()
		if s.eat(']') {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}
