package stream

import (
	"context"
	"errors"
	"testing"

	"github.com/ferrynet/ferry/protocols/pb"
	"github.com/ferrynet/ferry/store"
)

// TestApplyOne: every outcome of one inbound change under a savepoint, the
// table the delivery, catch-up and gossip paths share: applied and
// duplicate keep the writes, a refusal undoes them unless it keeps them, any
// other error fails the transaction.
func TestApplyOne(t *testing.T) {
	st := openMem(t, nil)
	errDisk := errors.New("disk")
	for _, c := range []struct {
		name    string
		status  pb.AckStatus
		err     error
		want    Outcome
		wantErr error
		kept    bool
	}{
		{"applied", pb.AckStatus_ACK_STATUS_APPLIED, nil, Applied, nil, true},
		{"duplicate", pb.AckStatus_ACK_STATUS_DUPLICATE, nil, Duplicate, nil, true},
		{"refused", 0, Reject("no"), Refused, nil, false},
		{"refused, keeping its writes", 0, RejectKeeping("no"), Refused, nil, true},
		{"failed", 0, errDisk, 0, errDisk, false},
	} {
		var out Outcome
		var rej *RejectError
		err := st.Update(context.Background(), func(tx *store.Txn) error {
			var err error
			out, rej, err = ApplyOne(tx, &Inbound{}, func(tx *store.Txn, _ *Inbound) (pb.AckStatus, error) {
				tx.SetCounter("apply-one/"+c.name, 1)
				return c.status, c.err
			})
			if err != nil {
				return err
			}
			v, err := tx.CounterValue("apply-one/" + c.name)
			if err != nil {
				return err
			}
			if kept := v == 1; kept != c.kept {
				t.Errorf("%s: the write kept: %v, want %v", c.name, kept, c.kept)
			}
			return nil
		})
		if !errors.Is(err, c.wantErr) {
			t.Errorf("%s: transaction error %v, want %v", c.name, err, c.wantErr)
			continue
		}
		if err == nil && (out != c.want || (out == Refused) != (rej != nil)) {
			t.Errorf("%s: outcome %v, refusal %v; want %v", c.name, out, rej, c.want)
		}
	}
}
