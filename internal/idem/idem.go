// Package idem makes the requests apps send safe to retry: a request that
// carries an idempotency key (NATS header Nats-Msg-Id, body field
// idempotency_key, admin API header Idempotency-Key) and is repeated within
// the store's window gets the first answer instead of being done twice (or
// answered conflict). The key's record is written in the same transaction as
// the change (store/idem.go), so a crash keeps both or neither.
//
// A key names one request: the same key with another request body is
// refused with conflict. Only requests that were committed are remembered;
// a request that failed wrote nothing, and its retry runs again.
//
// The package must not do more than the check and the record: services call
// Wrap around their transaction function.
package idem

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
)

// Request is one keyed request: which operation, its key, and a digest of
// what it asks for. A nil *Request (no key) does nothing.
type Request struct {
	op, key string
	hash    [32]byte
}

// New checks key and fingerprints the request from its parts (in order).
// An empty key gives nil: the request is not deduplicated.
func New(op, key string, parts ...[]byte) (*Request, error) {
	if key == "" {
		return nil, nil
	}
	if len(key) > store.MaxIdempotencyKeyBytes || !utf8.ValidString(key) || !printable(key) {
		return nil, fmt.Errorf("%w: idempotency key must be 1-%d bytes of printable UTF-8", ferry.ErrBadRequest, store.MaxIdempotencyKeyBytes)
	}
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	r := &Request{op: op, key: key}
	h.Sum(r.hash[:0])
	return r, nil
}

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// JSON returns doc compacted (insignificant spaces do not make a request
// another one); doc itself when it is not valid JSON.
func JSON(doc []byte) []byte {
	var b bytes.Buffer
	if json.Compact(&b, doc) != nil {
		return doc
	}
	return b.Bytes()
}

// Key is the request's key ("" for nil).
func (r *Request) Key() string {
	if r == nil {
		return ""
	}
	return r.key
}

// Wrap runs fn inside the key's check. When the key was recorded for the
// same request within the window, fn does not run: replay gets the first
// answer and the transaction writes nothing. When it was recorded for
// another request, the transaction fails with conflict. Otherwise fn runs,
// and if it succeeds, answer() (the fields the caller will answer with) is
// recorded in the same transaction.
func Wrap(r *Request, answer func() any, replay func(first []byte) error, fn func(*store.Txn) error) func(*store.Txn) error {
	if r == nil {
		return fn
	}
	return func(tx *store.Txn) error {
		rec, found, err := tx.Idempotency(r.op, r.key)
		if err != nil {
			return err
		}
		if found {
			if rec.Hash != r.hash {
				return fmt.Errorf("%w: idempotency key %q was used for a different request at %s; a new request needs a new key",
					ferry.ErrConflict, r.key, rec.Created.UTC().Format(time.RFC3339))
			}
			return replay(rec.Answer)
		}
		if err := fn(tx); err != nil {
			return err
		}
		b, err := json.Marshal(answer())
		if err != nil {
			return fmt.Errorf("record the answer of idempotency key %q: %w", r.key, err)
		}
		return tx.PutIdempotency(r.op, r.key, r.hash, b)
	}
}

// MergeKey merges a key given in a header (headerName) into the body's
// field: one of them, or both the same; two different keys are a bad
// request.
func MergeKey(field *string, header, headerName string) error {
	switch {
	case header == "":
	case *field == "":
		*field = header
	case *field != header:
		return fmt.Errorf("%w: idempotency_key %q and the %s header %q differ; send one", ferry.ErrBadRequest, *field, headerName, header)
	}
	return nil
}
