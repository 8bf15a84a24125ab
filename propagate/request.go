package propagate

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/store"
)

// idemOp names propagate's keys in the store.
const idemOp = "propagate"

// admit runs the checks of a request that need no store: how deeply its
// payload nests (scanned, not decoded) and its idempotency key. It
// fingerprints the request for the key (action, data type, payload with
// insignificant spaces removed).
func (req *Request) admit() error {
	if req.scan == nil { // DecodeRequest checked the depth as it read
		if err := ferry.CheckJSONDepth(req.Payload); err != nil {
			return fmt.Errorf("payload: %w", err)
		}
	}
	if req.IdempotencyKey == "" {
		return nil
	}
	var err error
	req.idem, err = idem.New(idemOp, req.IdempotencyKey, []byte(req.Action), []byte(req.DataType), idem.JSON(req.Payload))
	return err
}

// withIdem wraps a propagate transaction in its idempotency key's check: a
// repeat of a committed request gets res of the first answer and writes
// nothing (see internal/idem).
func withIdem(req Request, res *Result, fn func(*store.Txn) error) func(*store.Txn) error {
	return idem.Wrap(req.idem, func() any { return *res }, func(first []byte) error {
		dec := json.NewDecoder(bytes.NewReader(first))
		dec.UseNumber() // versions stay exact
		var r Result
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("decode the first answer of idempotency key %q: %w", req.idem.Key(), err)
		}
		*res = r
		return nil
	}, fn)
}
