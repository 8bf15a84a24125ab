// Package ferry holds what every layer of Ferry shares with apps and
// operators: the error codes of SPEC.md and the sentinel errors they map to,
// one to one, and the rule for names that become NATS subject tokens. It
// imports nothing of Ferry's own.
package ferry

import (
	"errors"
)

// Sentinel errors. Wrap them with %w; Code maps them to the wire codes.
var (
	ErrBadRequest    = errors.New("bad request")
	ErrUnknownAction = errors.New("unknown action")
	ErrNotOwner      = errors.New("not the owner")
	ErrTooLarge      = errors.New("too large")
	ErrNotFound      = errors.New("not found")
	ErrConflict      = errors.New("conflict")
	ErrForbidden     = errors.New("forbidden")
	ErrUnavailable   = errors.New("unavailable")
	// ErrCorrupt: the node's store failed a checksum where the answer is;
	// asking again gets the same answer until the store is repaired (it is
	// not retryable, unlike ErrUnavailable).
	ErrCorrupt = errors.New("store corrupt")
)

// Error codes of SPEC.md.
const (
	CodeBadRequest    = "bad_request"
	CodeUnknownAction = "unknown_action"
	CodeNotOwner      = "not_owner"
	CodeTooLarge      = "too_large"
	CodeNotFound      = "not_found"
	CodeConflict      = "conflict"
	CodeForbidden     = "forbidden"
	CodeUnavailable   = "unavailable"
	CodeCorrupt       = "corrupt"
)

var codes = []struct {
	err  error
	code string
}{
	{ErrBadRequest, CodeBadRequest},
	{ErrUnknownAction, CodeUnknownAction},
	{ErrNotOwner, CodeNotOwner},
	{ErrTooLarge, CodeTooLarge},
	{ErrNotFound, CodeNotFound},
	{ErrConflict, CodeConflict},
	{ErrForbidden, CodeForbidden},
	{ErrCorrupt, CodeCorrupt},
	{ErrUnavailable, CodeUnavailable},
}

// Code returns the wire code of err: the code of the first sentinel it
// wraps, else unavailable (the node could not do it, through no fault of
// the request).
func Code(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeUnavailable
}

// ValidName reports whether s may be a data type or a shared table name:
// 1-64 letters, digits, '_' or '-', so it is one NATS subject token.
// A loop, not a regular expression: every received change's data type is
// checked (issue 18).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
