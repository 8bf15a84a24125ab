package faults

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// decided is a request's outcome as one node holds it.
type decided struct {
	Status   string
	Sequence uint64
}

// ledgerAt is node n's requests by origin.
func ledgerAt(t *testing.T, n *proc.Node) (map[string]decided, error) {
	t.Helper()
	rows, err := groupRequests(t, n)
	if err != nil {
		return nil, err
	}
	out := make(map[string]decided, len(rows))
	for _, r := range rows {
		out[r.Origin] = decided{r.Status, r.Sequence}
	}
	return out, nil
}

// tableAt is node n's rows of table, as JSON by id.
func tableAt(n *proc.Node, table string) (map[uint64]string, error) {
	out := map[uint64]string{}
	after := ""
	for {
		q := url.Values{"limit": {"500"}}
		if after != "" {
			q.Set("after", after)
		}
		code, body, err := n.Get("/api/v1/tables/" + table + "/rows?" + q.Encode())
		if err != nil || code != http.StatusOK {
			return nil, fmt.Errorf("rows at %s: %d %v", n.Name(), code, err)
		}
		var page struct {
			Rows []json.RawMessage `json:"rows"`
			Next string            `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, err
		}
		for _, r := range page.Rows {
			var id struct {
				ID uint64 `json:"id"`
			}
			if err := json.Unmarshal(r, &id); err != nil || id.ID == 0 {
				return nil, fmt.Errorf("a row without an id at %s: %s", n.Name(), r)
			}
			out[id.ID] = string(r)
		}
		if page.Next == "" || len(page.Rows) == 0 {
			return out, nil
		}
		after = page.Next
	}
}

// ferryCLI runs the ferry binary against node n's home.
func ferryCLI(t *testing.T, n *proc.Node, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(proc.Binary(t), append([]string{"--home", n.Home().Dir}, args...)...).CombinedOutput()
	return string(out), err
}

// submitAll has the apps submit count inserts into table places, ids from
// first, with workers at once; it returns the origins.
func submitAll(t *testing.T, apps []*nats.Conn, first, count, workers int) []string {
	t.Helper()
	origins := make([]string, count)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				id := first + i
				var r struct {
					OK      bool
					Request review.Row
					Error   any
				}
				m, err := apps[(w+i)%len(apps)].Request("ferry.review.submit",
					fmt.Appendf(nil, `{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p%d"}}`, id, id), 20*time.Second)
				if err != nil || json.Unmarshal(m.Data, &r) != nil || !r.OK {
					errs <- fmt.Errorf("submit %d: %v %+v", id, err, r)
					return
				}
				origins[i] = r.Request.Origin
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return origins
}

// decideAllAt decides every origin at reviewer r through its admin API with
// workers at once: rejected where reject says so, else accepted.
func decideAllAt(t *testing.T, r *proc.Node, origins []string, reject func(i int) bool, workers int) {
	t.Helper()
	var ids map[string]uint64
	wait.Until(t, time.Minute, fmt.Sprintf("%s holds the %d requests", r.Name(), len(origins)), func() error {
		rows, err := groupRequests(t, r)
		if err != nil {
			return err
		}
		ids = map[string]uint64{}
		for _, x := range rows {
			ids[x.Origin] = x.ID
		}
		for _, o := range origins {
			if ids[o] == 0 {
				return fmt.Errorf("%s does not hold %s yet", r.Name(), o)
			}
		}
		return nil
	})
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(origins) {
					return
				}
				verb := "accept"
				if reject(i) {
					verb = "reject"
				}
				code, body, err := r.Do(http.MethodPost, fmt.Sprintf("/api/v1/requests/%d/%s", ids[origins[i]], verb), nil, nil)
				if err != nil || code != http.StatusOK {
					errs <- fmt.Errorf("%s %s at %s: %d %s %v", verb, origins[i], r.Name(), code, body, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// sameLedger waits until every node holds every origin of want as want
// says, and the accepted ones under the sequences 1..n without a gap.
func sameLedger(t *testing.T, ns []*proc.Node, want map[string]decided) {
	t.Helper()
	var seqs []uint64
	for _, d := range want {
		if d.Sequence > 0 {
			seqs = append(seqs, d.Sequence)
		}
	}
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("the decided sequences are not 1..%d: %d at %d", len(seqs), s, i)
		}
	}
	wait.Until(t, 2*time.Minute, fmt.Sprintf("every node holds the %d requests with the same outcome and sequence", len(want)), func() error {
		for _, n := range ns {
			got, err := ledgerAt(t, n)
			if err != nil {
				return err
			}
			for o, d := range want {
				g, ok := got[o]
				// A member holds the decided rows of the requests it
				// applied; rejections of others' requests are not sent to it.
				if !ok && d.Status == "rejected" {
					continue
				}
				if g != d {
					return fmt.Errorf("%s holds %s as %+v, want %+v", n.Name(), o, g, d)
				}
			}
		}
		return nil
	})
}

// TestUpgradeOneReviewerToAGroup (issue 19, "Changing the group"): a
// network with one reviewer R1 and 1,000 requests decided there (a few
// rejected) moves to the group R1, R2, R3, where R2 and R3 were members:
// every node's ferry.yaml gets reviewers, every node restarts, R1 (the
// founder) bootstraps alone with its ledger and `ferry reviewers add`
// brings R2 and R3 in, from R1's snapshot. No decision is renumbered or
// lost on any node; R2's and R3's `ferry requests list` shows the decided
// rows; decisions taken at R2 and R3 continue the sequence while members
// apply; every acknowledgement row turns sended; members' tables equal the
// reviewers'. Then `ferry reviewers remove R3`: the two left decide.
func TestUpgradeOneReviewerToAGroup(t *testing.T) {
	total, after := 1000, 20
	r1 := proc.New(t, proc.Options{Name: "R1"})
	r2 := proc.New(t, proc.Options{Name: "R2"})
	r3 := proc.New(t, proc.Options{Name: "R3"})
	members := []*proc.Node{proc.New(t, proc.Options{Name: "M1"}), proc.New(t, proc.Options{Name: "M2"}), proc.New(t, proc.Options{Name: "M3"})}
	rs := []*proc.Node{r1, r2, r3}
	all := append([]*proc.Node{r1, r2, r3}, members...)
	for _, n := range all {
		n.SetReviewer(r1)
		if n != r1 {
			n.SetBootstrap(r1)
		}
	}
	for _, n := range all {
		n.Start()
	}
	// Before the group: the lone reviewer has no group to list.
	if out, err := ferryCLI(t, r1, "reviewers", "list"); err == nil || !strings.Contains(out, "no review group here") {
		t.Fatalf("ferry reviewers list at the lone reviewer: %v\n%s", err, out)
	}
	var apps []*nats.Conn
	for _, n := range []*proc.Node{r2, r3, members[0], members[1], members[2]} {
		apps = append(apps, connect(t, n.NATSURL()))
	}
	start := time.Now()
	origins := submitAll(t, apps, 1, total, 16)
	rejected := func(i int) bool { return i%97 == 50 }
	decideAllAt(t, r1, origins, rejected, 16)
	before, err := ledgerAt(t, r1)
	if err != nil {
		t.Fatal(err)
	}
	accepted := 0
	for _, o := range origins {
		if before[o].Status == "accepted" {
			accepted++
		}
	}
	t.Logf("%d requests submitted at five nodes and decided at R1 (%d accepted) in %v", total, accepted, time.Since(start).Round(time.Millisecond))
	sameLedger(t, all, before)
	for _, a := range apps {
		a.Close()
	}

	// The upgrade: reviewers in every ferry.yaml, every node restarted.
	group := []string{r1.PeerID().String(), r2.PeerID().String(), r3.PeerID().String()}
	for _, n := range all {
		n.Term(30 * time.Second)
		n.Configure(func(c *node.Config) { c.Reviewers = group })
	}
	for _, n := range all {
		n.Start()
	}
	if l := groupLeader(t, []*proc.Node{r1}); l != r1 {
		t.Fatalf("%s leads, want the founder R1", l.Name())
	}
	if !strings.Contains(r1.StderrAll(), "review group founded by this reviewer alone") {
		t.Fatalf("R1 did not log its founding:\n%s", r1.Stderr())
	}
	// Bad input, and a member: each named.
	if out, err := ferryCLI(t, r1, "reviewers", "add", "not-a-peer"); err == nil || !strings.Contains(out, `"not-a-peer" is not a peer id`) {
		t.Fatalf("add of a bad id: %v\n%s", err, out)
	}
	if out, err := ferryCLI(t, r1, "reviewers", "add", members[0].PeerID().String()); err == nil || !strings.Contains(out, "is not in this node's `reviewers`") {
		t.Fatalf("add of a member: %v\n%s", err, out)
	}
	if out, err := ferryCLI(t, members[0], "reviewers", "list"); err == nil || !strings.Contains(out, "no review group here") {
		t.Fatalf("ferry reviewers list at a member: %v\n%s", err, out)
	}
	grown := time.Now()
	for _, c := range []struct{ at, add *proc.Node }{{r1, r2}, {r2, r3}} { // the second forwarded by R2
		wait.Until(t, time.Minute, "ferry reviewers add "+c.add.Name(), func() error {
			out, err := ferryCLI(t, c.at, "reviewers", "add", c.add.PeerID().String())
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	t.Logf("R2 and R3 added in %v", time.Since(grown).Round(time.Millisecond))
	// R3 lists the group once the configuration reached it.
	wait.Until(t, 30*time.Second, "ferry reviewers list at R3 shows three reviewers", func() error {
		out, err := ferryCLI(t, r3, "reviewers", "list", "--json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var gs node.GroupStatus
		if err := json.Unmarshal([]byte(out), &gs); err != nil {
			return err
		}
		if len(gs.Servers) != 3 {
			return fmt.Errorf("%d reviewers listed: %s", len(gs.Servers), out)
		}
		return nil
	})
	// R2 and R3 hold the ledger as R1 decided it, from R1's snapshot, and
	// list it.
	sameLedger(t, all, before)
	for _, r := range []*proc.Node{r2, r3} {
		if !strings.Contains(r.StderrAll(), "ledger restored from a snapshot") {
			t.Fatalf("%s did not restore the ledger from a snapshot:\n%s", r.Name(), r.Stderr())
		}
	}
	for _, r := range []*proc.Node{r2, r3} {
		out, err := ferryCLI(t, r, "requests", "list", "--status", "accepted", "--json")
		if err != nil {
			t.Fatalf("ferry requests list at %s: %v\n%s", r.Name(), err, out)
		}
		var rows []review.Row
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != accepted {
			t.Fatalf("ferry requests list --status accepted at %s: %d rows, want %d (%v)", r.Name(), len(rows), accepted, err)
		}
	}

	// More requests, decided at R2 and R3 through the group while the
	// members apply the ones before.
	apps = apps[:0]
	for _, m := range members {
		apps = append(apps, connect(t, m.NATSURL()))
	}
	more := submitAll(t, apps, total+1, after, 4)
	var wg sync.WaitGroup
	for i, r := range []*proc.Node{r2, r3} {
		half := more[i*after/2 : (i+1)*after/2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, o := range half {
				acceptIn(t, r, o)
			}
		}()
	}
	wg.Wait()
	final, err := ledgerAt(t, r1)
	if err != nil {
		t.Fatal(err)
	}
	for o, d := range before {
		if final[o] != d {
			t.Fatalf("%s was %+v before the upgrade, %+v after", o, d, final[o])
		}
	}
	for _, o := range more {
		if final[o].Status != "accepted" || final[o].Sequence <= uint64(accepted) {
			t.Fatalf("%s after the upgrade: %+v", o, final[o])
		}
	}
	sameLedger(t, all, final)
	sameTables(t, all)
	acksSended(t, rs)

	// Removing a reviewer: the two left decide.
	if out, err := ferryCLI(t, r1, "reviewers", "remove", r3.PeerID().String()); err != nil || !strings.Contains(out, "removed from the review group; it has 2 reviewer(s)") {
		t.Fatalf("ferry reviewers remove R3: %v\n%s", err, out)
	}
	last := submitAll(t, apps[:1], total+after+1, 1, 1)
	acceptIn(t, r2, last[0])
	final, err = ledgerAt(t, r2)
	if err != nil {
		t.Fatal(err)
	}
	if d := final[last[0]]; d.Sequence != uint64(accepted+after+1) {
		t.Fatalf("the decision after the removal: %+v, want sequence %d", d, accepted+after+1)
	}
	sameLedger(t, []*proc.Node{r1, r2, members[0], members[1], members[2]}, final)
	t.Logf("one reviewer with %d decisions became a group of three: none renumbered or lost on six nodes; %d more decided at R2 and R3 (sequences %d..%d); R3 removed, the two left decided sequence %d",
		accepted, after, accepted+1, accepted+after, accepted+after+1)
}

// sameTables waits until every node holds the same rows of table places.
func sameTables(t *testing.T, ns []*proc.Node) {
	t.Helper()
	wait.Until(t, time.Minute, "every node holds the same table rows", func() error {
		var want map[uint64]string
		for _, n := range ns {
			got, err := tableAt(n, "places")
			if err != nil {
				return err
			}
			if want == nil {
				want = got
				continue
			}
			if len(got) != len(want) {
				return fmt.Errorf("%s holds %d rows, %s %d", n.Name(), len(got), ns[0].Name(), len(want))
			}
			for id, row := range want {
				if got[id] != row {
					return fmt.Errorf("%s holds row %d as %s, %s as %s", n.Name(), id, got[id], ns[0].Name(), row)
				}
			}
		}
		if len(want) == 0 {
			return errors.New("no rows")
		}
		return nil
	})
}
