package ferry

import "fmt"

// MaxJSONDepth bounds how deeply the documents apps send may nest (resource
// payloads, review data). Deeper documents cost the node far more to store,
// render and pretty-print than their size suggests (an 18 KB document of
// 9,000 nested arrays answered as 162 MB of indented JSON).
const MaxJSONDepth = 64

// CheckJSONDepth refuses a document nested deeper than MaxJSONDepth with
// ErrBadRequest. It scans the bytes (strings skipped, escapes honoured)
// without decoding; it does not check that doc is valid JSON.
func CheckJSONDepth(doc []byte) error {
	depth := 0
	for i := 0; i < len(doc); i++ {
		switch doc[i] {
		case '"':
			for i++; i < len(doc) && doc[i] != '"'; i++ {
				if doc[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
			if depth > MaxJSONDepth {
				return fmt.Errorf("%w: the document nests deeper than %d levels", ErrBadRequest, MaxJSONDepth)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}
