package bench

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/propagate"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/store"
)

// joinResult is the catch-up of a new member.
type joinResult struct {
	Rows     int
	Build    time.Duration // reviewer: submit and accept every row
	Elapsed  time.Duration // new member: start until it holds every row
	Check    string
	Failed   bool
	Resource int
}

func lastResource(n interface {
	Store() *store.Store
}) uint64 {
	v, _ := n.Store().Counter(propagate.CtrResourceHead)
	return v
}

// newMemberJoin: the reviewer R holds rows decided rows in table "big" and
// resources of its own; member N, R's partner, starts fresh and catches up
// through sync alone. The clock runs from N's start to N holding every row
// and resource.
func newMemberJoin(t *testing.T, rows, resources, inflight int) joinResult {
	net := testnet.Start(t, testnet.Options{N: 2, Names: []string{"R", "N"}, Reviewer: testnet.At(0),
		Partners: map[int][]int{0: {1}, 1: {0}}, Later: []int{1}}) // N is new: R has never met it
	r := net.Node(0)
	begin := time.Now()
	sem := make(chan struct{}, inflight)
	errs := make(chan error, rows)
	for i := 1; i <= rows; i++ {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			done := make(chan struct{})
			var row review.Row
			var err error
			r.Review().Submit(t.Context(), review.SubmitRequest{Type: "insert", TableName: "big", TableID: uint64(i),
				Data: []byte(fmt.Sprintf(`{"n":%d,"pad":"0123456789abcdef0123456789abcdef"}`, i))},
				func(x review.Row, e error) { row, err = x, e; close(done) })
			<-done
			if err != nil {
				errs <- err
				return
			}
			dd := make(chan struct{})
			r.Decide(review.DecideRequest{RequestID: row.ID, Decision: "accept"}, func(_ review.Row, e error) { err = e; close(dd) })
			<-dd
			errs <- err
		}()
	}
	for range rows {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	nc := net.NATS(0)
	for i := range resources {
		if _, err := nc.Request("ferry.propagate", []byte(fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"r%d"}}`, i)), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	build := time.Since(begin)
	start := time.Now()
	net.Restart(1)
	n := net.Node(1)
	res := joinResult{Rows: rows, Build: build, Resource: resources}
	testnet.WaitFor(t, 10*time.Minute, "N holds every row and resource", func() bool {
		held, _ := n.Store().Counter(propagate.ChainCounter(r.ID()))
		return n.Review().Applied() == uint64(rows) && held > 0 && held == lastResource(r)
	})
	res.Elapsed = time.Since(start)
	if got, _ := n.Store().Rows("big"); len(got) != rows {
		t.Fatalf("N holds %d rows", len(got))
	}
	if rs, _ := n.Store().Resources("vm"); len(rs) != resources {
		t.Fatalf("N holds %d resources", len(rs))
	}
	res.Check = fmt.Sprintf("rows %d/%d, decisions applied %d, resources %d/%d", rows, rows, n.Review().Applied(), resources, resources)
	if n.Review().Applied() != uint64(rows) {
		res.Failed = true
	}
	return res
}
