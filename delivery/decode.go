package delivery

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/wording"
)

// Bounds of a wait.
const (
	// DefaultWait is how long a wait without timeout_ms waits.
	DefaultWait = 30 * time.Second
	// MaxWait bounds timeout_ms: an app that wants longer asks again (an
	// answer at the timeout is cheap), and a node's shutdown answers every
	// open wait anyway.
	MaxWait = 5 * time.Minute
	// MaxReceivers bounds the receivers one wait lists.
	MaxReceivers = 1000
)

// StatusRequest is the body of <prefix>.delivery.status.
type StatusRequest struct {
	Version uint64
}

// WaitRequest is the body of <prefix>.delivery.wait.
type WaitRequest struct {
	Version uint64
	// Receivers, when set, are the receivers to wait for (each must be one
	// the change is addressed to); nil: all of them.
	Receivers []peer.ID
	// Timeout is how long to wait (timeout_ms; DefaultWait when absent).
	Timeout time.Duration
}

// UnmarshalJSON reads {"version"}: a field it does not know is refused by
// name.
func (r *StatusRequest) UnmarshalJSON(b []byte) error {
	fields, err := object(b, "version")
	if err != nil {
		return err
	}
	r.Version, err = version(fields)
	return err
}

// UnmarshalJSON reads {"version", "receivers"?, "timeout_ms"?}: a field it
// does not know is refused by name.
func (r *WaitRequest) UnmarshalJSON(b []byte) error {
	fields, err := object(b, "version", "receivers", "timeout_ms")
	if err != nil {
		return err
	}
	if r.Version, err = version(fields); err != nil {
		return err
	}
	r.Timeout = DefaultWait
	if raw, ok := fields["timeout_ms"]; ok {
		ms, err := strconv.ParseInt(string(raw), 10, 64)
		switch {
		case err != nil && isInteger(raw):
			return fmt.Errorf("timeout_ms: %s is out of range (0-%d)", raw, MaxWait.Milliseconds())
		case err != nil:
			return fmt.Errorf("timeout_ms: %s is not a whole number of milliseconds", raw)
		case ms < 0:
			return fmt.Errorf("timeout_ms: %d is negative", ms)
		case ms > MaxWait.Milliseconds():
			return fmt.Errorf("timeout_ms: %d is over the limit of %d (%s); ask again for longer", ms, MaxWait.Milliseconds(), MaxWait)
		}
		r.Timeout = time.Duration(ms) * time.Millisecond
	}
	raw, ok := fields["receivers"]
	if !ok {
		return nil
	}
	var ids []string
	if err := json.Unmarshal(raw, &ids); err != nil || ids == nil {
		return fmt.Errorf("receivers: %s is not a list of peer ids", clip(raw))
	}
	if len(ids) == 0 {
		return errors.New("receivers: the list is empty; leave it out to wait for every receiver")
	}
	if len(ids) > MaxReceivers {
		return fmt.Errorf("receivers: %d peer ids, at most %d", len(ids), MaxReceivers)
	}
	r.Receivers = make([]peer.ID, 0, len(ids))
	for i, s := range ids {
		p, err := peer.Decode(s)
		if err != nil {
			return fmt.Errorf("receivers[%d]: %q is not a peer id", i, clip([]byte(s)))
		}
		if !slices.Contains(r.Receivers, p) {
			r.Receivers = append(r.Receivers, p)
		}
	}
	return nil
}

// object reads a JSON object whose fields are among known.
func object(b []byte, known ...string) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%s is not a JSON object", clip(b))
	}
	for k := range fields {
		if !slices.Contains(known, k) {
			if s := wording.Suggest(k, known); s != "" {
				return nil, fmt.Errorf("unknown field `%s` (did you mean `%s`?)", clip([]byte(k)), s)
			}
			return nil, fmt.Errorf("unknown field `%s`", clip([]byte(k)))
		}
	}
	return fields, nil
}

// version reads the required field version: a positive whole number.
func version(fields map[string]json.RawMessage) (uint64, error) {
	raw, ok := fields["version"]
	if !ok {
		return 0, errors.New("version is missing")
	}
	v, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("version: %s is not a version (a positive whole number, as ferry.propagate answered it)", clip(raw))
	}
	return v, nil
}

// isInteger reports whether raw is a JSON number without fraction or
// exponent (possibly too large for an int64).
func isInteger(raw []byte) bool {
	if len(raw) > 0 && raw[0] == '-' {
		raw = raw[1:]
	}
	if len(raw) == 0 {
		return false
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// clip shortens what an error message quotes of a request.
func clip(b []byte) string {
	const most = 64
	if len(b) > most {
		return string(b[:most]) + "..."
	}
	return string(b)
}
