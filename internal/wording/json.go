package wording

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"

	"github.com/ferrynet/ferry"
)

// DecodeJSON decodes data, which must be exactly one JSON value, into v (a
// pointer). It refuses an object member v has no field for, naming it and
// the nearest field v has. Its errors wrap ferry.ErrBadRequest and say what
// is wrong in the user's words. within names the document in messages:
// "" for a request body (fields are named `since`, the whole is "the
// body"), or the member it is part of ("payload": fields are named
// `payload.limit`, the whole is `payload`).
func DecodeJSON(data []byte, v any, within string) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return fmt.Errorf("%w: %s is empty; it must be a JSON object", ferry.ErrBadRequest, document(within))
	}
	if !json.Valid(data) {
		var x any
		return fmt.Errorf("%w: %s", ferry.ErrBadRequest, JSONError(json.Unmarshal(data, &x), data, nil, within))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", ferry.ErrBadRequest, JSONError(err, data, v, within))
	}
	return nil
}

// JSONError words an error of encoding/json met decoding data into v (v
// may be nil when unknown): which field, what it must be, what it is.
func JSONError(err error, data []byte, v any, within string) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		var root reflect.Type
		if v != nil {
			root = reflect.TypeOf(v)
		}
		want := typeWords(declared(root, te.Field, te.Type))
		got := gotWords(te, data)
		if te.Field == "" {
			if want == "an object" {
				want = "a JSON object"
			}
			return fmt.Sprintf("%s must be %s, got %s", document(within), want, got)
		}
		return fmt.Sprintf("%s must be %s, got %s", Quote(join(within, te.Field)), want, got)
	case errors.As(err, &se):
		return fmt.Sprintf("%s is not valid JSON: %s (at byte %d)", document(within), se.Error(), se.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Sprintf("%s is not valid JSON: it ends before the value is complete", document(within))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if n, uerr := strconv.Unquote(name); uerr == nil {
			name = n
		}
		names := fieldNames(v)
		msg := "unknown field " + Quote(join(within, name))
		if s := Suggest(name, names); s != "" {
			return msg + " (did you mean " + Quote(join(within, s)) + "?)"
		}
		if len(names) > 0 {
			q := make([]string, len(names))
			for i, n := range names {
				q[i] = Quote(join(within, n))
			}
			return msg + "; the fields are " + strings.Join(q, ", ")
		}
		return msg
	}
	var ie *json.InvalidUnmarshalError
	if errors.As(err, &ie) {
		return document(within) + " could not be read" // a bug of the caller, not of the input
	}
	return err.Error() // an UnmarshalJSON method's own error, in its own words
}

func document(within string) string {
	if within == "" {
		return "the body"
	}
	return Quote(within)
}

func join(within, field string) string {
	if within == "" {
		return field
	}
	return within + "." + field
}

// declared is the type of the field at path (dot-separated JSON names)
// in root: the container the failing value belongs to, so that a wrong
// element of a []string says "an array of strings". It falls back to
// failed when path cannot be followed.
func declared(root reflect.Type, path string, failed reflect.Type) reflect.Type {
	if root == nil {
		return failed
	}
	t := deref(root)
	if path == "" {
		return t
	}
	for _, seg := range strings.Split(path, ".") {
		for t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = deref(t.Elem())
		}
		if t.Kind() != reflect.Struct {
			return failed
		}
		f, ok := fieldByJSONName(t, seg)
		if !ok {
			return failed
		}
		t = deref(f.Type)
	}
	return t
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// jsonName is the member name encoding/json uses for f ("" when none).
func jsonName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("json")
	if tag == "-" {
		return ""
	}
	if name, _, _ := strings.Cut(tag, ","); name != "" {
		return name
	}
	return f.Name
}

// fieldByJSONName finds the field encoding/json would fill from member
// name: the exact name first, then without regard to case.
func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	var folded *reflect.StructField
	for i := range t.NumField() {
		f := t.Field(i)
		n := jsonName(f)
		if n == name {
			return f, true
		}
		if folded == nil && strings.EqualFold(n, name) {
			folded = &f
		}
	}
	if folded != nil {
		return *folded, true
	}
	return reflect.StructField{}, false
}

// fieldNames lists the JSON member names of v's struct, in order.
func fieldNames(v any) []string {
	if v == nil {
		return nil
	}
	t := deref(reflect.TypeOf(v))
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for i := range t.NumField() {
		if n := jsonName(t.Field(i)); n != "" {
			out = append(out, n)
		}
	}
	return out
}

var rawMessage = reflect.TypeFor[json.RawMessage]()

// typeWords says what a value of t looks like in JSON.
func typeWords(t reflect.Type) string {
	if t == nil {
		return "a JSON value"
	}
	t = deref(t)
	if t == rawMessage {
		return "a JSON value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 && t.Kind() == reflect.Slice {
			return "a base64 string"
		}
		if e := plural(t.Elem()); e != "" {
			return "an array of " + e
		}
		return "an array"
	case reflect.Map:
		if e := plural(t.Elem()); e != "" {
			return "an object whose values are " + e
		}
		return "an object"
	case reflect.Struct:
		return "an object"
	}
	return "a JSON value"
}

// plural names many values of t ("" for any value).
func plural(t reflect.Type) string {
	t = deref(t)
	if t == rawMessage || t.Kind() == reflect.Interface {
		return ""
	}
	switch w := typeWords(t); w {
	case "true or false":
		return "true or false values"
	case "a JSON value":
		return ""
	default:
		w = strings.TrimPrefix(strings.TrimPrefix(w, "an "), "a ")
		if head, rest, ok := strings.Cut(w, " of "); ok {
			return head + "s of " + rest
		}
		if head, rest, ok := strings.Cut(w, " whose "); ok {
			return head + "s whose " + rest
		}
		return w + "s"
	}
}

// gotWords shows the value that was refused: its text when short (a
// number, or the value found at the field's path), else its kind.
func gotWords(te *json.UnmarshalTypeError, data []byte) string {
	if n, ok := strings.CutPrefix(te.Value, "number "); ok {
		return n
	}
	if raw, ok := lookup(data, te.Field); ok {
		return raw
	}
	switch te.Value {
	case "string":
		return "a string"
	case "number":
		return "a number"
	case "bool":
		return "true or false"
	case "array":
		return "an array"
	case "object":
		return "an object"
	case "null":
		return "null"
	}
	return te.Value
}

// maxShown bounds a value quoted back in a message.
const maxShown = 40

// lookup finds the value at path (dot-separated member names, objects
// only) in data and returns it as compact JSON, shortened.
func lookup(data []byte, path string) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var x any
	if dec.Decode(&x) != nil {
		return "", false
	}
	if path != "" {
		for _, seg := range strings.Split(path, ".") {
			m, ok := x.(map[string]any)
			if !ok {
				return "", false
			}
			v, ok := m[seg]
			if !ok { // encoding/json matched the member without regard to case
				for k, kv := range m {
					if strings.EqualFold(k, seg) {
						v, ok = kv, true
						break
					}
				}
			}
			if !ok {
				return "", false
			}
			x = v
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if enc.Encode(x) != nil {
		return "", false
	}
	s := strings.TrimSpace(b.String())
	if len(s) > maxShown {
		cut := maxShown
		for cut > 0 && s[cut]&0xC0 == 0x80 { // not inside a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "…"
	}
	return s, true
}
