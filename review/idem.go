package review

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/ferrynet/ferry/internal/idem"
	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// idemOp names review.submit's keys in the store.
const idemOp = "review.submit"

// admitKey checks the request's idempotency key and fingerprints the request
// for it: type, table, row id, the checked data and the description.
func (req *SubmitRequest) admitKey(typ Type, data []byte) error {
	var err error
	req.idem, err = idem.New(idemOp, req.IdempotencyKey, []byte(typ.String()), []byte(req.TableName),
		[]byte(strconv.FormatUint(req.TableID, 10)), idem.JSON(data), []byte(req.Description))
	return err
}

// withIdem wraps Submit's transaction in its key's check: a repeat of a
// committed request sets *first to the first answer and writes nothing.
func (s *Service) withIdem(req SubmitRequest, row **storepb.Request, first **Row, fn func(*store.Txn) error) func(*store.Txn) error {
	return idem.Wrap(req.idem, func() any { return s.render(*row) }, func(b []byte) error {
		var r Row
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("decode the first answer of idempotency key %q: %w", req.idem.Key(), err)
		}
		*first = &r
		return nil
	}, fn)
}
