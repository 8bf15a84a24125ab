package faults

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// groupRequests lists node n's request rows, every page.
func groupRequests(t *testing.T, n *proc.Node) ([]review.Row, error) {
	t.Helper()
	var all []review.Row
	after := ""
	for {
		q := url.Values{"limit": {"500"}}
		if after != "" {
			q.Set("after", after)
		}
		code, body, err := n.Get("/api/v1/requests?" + q.Encode())
		if err != nil || code != http.StatusOK {
			return nil, fmt.Errorf("list requests at %s: %d %v", n.Name(), code, err)
		}
		var page struct {
			Requests []review.Row `json:"requests"`
			Next     string       `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Requests...)
		if page.Next == "" || len(page.Requests) == 0 {
			return all, nil
		}
		after = page.Next
	}
}

// startGroup configures rs as the review group (`reviewers`, rs[0] the
// founder and everyone's bootstrap), starts them and the members, and
// connects an app to each member's NATS. all is rs then members.
func startGroup(t *testing.T, rs, members []*proc.Node) (all []*proc.Node, apps []*nats.Conn) {
	t.Helper()
	all = append(slices.Clone(rs), members...)
	var group []string
	for _, r := range rs {
		group = append(group, r.PeerID().String())
	}
	for _, n := range all {
		n.Configure(func(c *node.Config) { c.Reviewers = group })
		if n != rs[0] {
			n.SetBootstrap(rs[0])
		}
	}
	for _, n := range all {
		n.Start()
	}
	for _, m := range members {
		apps = append(apps, connect(t, m.NATSURL()))
	}
	return all, apps
}

// groupLeader is the running reviewer that says it leads the group.
func groupLeader(t *testing.T, rs []*proc.Node) *proc.Node {
	t.Helper()
	var l *proc.Node
	wait.For(t, time.Minute, "a leader of the review group", func() bool {
		for _, r := range rs {
			if r.Running() && metricOf(t, r, "ferry_review_group_is_leader") == 1 {
				l = r
				return true
			}
		}
		return false
	})
	return l
}

// acceptOnce asks reviewer r's operator to accept the request of origin
// once, whatever the answer: the caller learns the outcome from the rows.
func acceptOnce(t *testing.T, r *proc.Node, origin string) {
	t.Helper()
	rows, err := groupRequests(t, r)
	if err != nil {
		return
	}
	if i := slices.IndexFunc(rows, func(x review.Row) bool { return x.Origin == origin }); i >= 0 {
		_, _, _ = r.Do(http.MethodPost, fmt.Sprintf("/api/v1/requests/%d/accept", rows[i].ID), nil, nil)
	}
}

// acceptIn has reviewer r's operator accept the request of origin through
// the admin API, asking again while the group cannot decide; it returns
// when r answered ok (or conflict for a request an earlier, uncertain try
// decided).
func acceptIn(t *testing.T, r *proc.Node, origin string) {
	t.Helper()
	wait.Until(t, time.Minute, "accept "+origin+" at "+r.Name(), func() error {
		rows, err := groupRequests(t, r)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(rows, func(x review.Row) bool { return x.Origin == origin })
		if i < 0 {
			return fmt.Errorf("%s does not hold %s yet", r.Name(), origin)
		}
		if rows[i].Status == "accepted" {
			return nil
		}
		code, body, err := r.Do(http.MethodPost, fmt.Sprintf("/api/v1/requests/%d/accept", rows[i].ID), nil, nil)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("accept at %s: %d %s %v", r.Name(), code, body, err)
		}
		return nil
	})
}

// TestReviewGroupLeaderSIGKILL: three reviewers (`ferry run` children)
// and three members; 200 requests from the members are accepted at the
// reviewers in turn while the group's leader is killed with SIGKILL (and
// restarted) 5 times, at a random request of each fifth of the run and a
// random moment of that request's accept: before it, while the accept is
// in flight at the leader or at a follower forwarding to it. An accept
// the kill cut off is taken to another reviewer, which answers from what
// the group did. Every request is decided once, under the same sequence
// on every node, the sequences 1..n, and every reviewer's acknowledgement
// rows turn sended; the figure is how long after each kill the next
// decision was on disk at the reviewer that took it.
func TestReviewGroupLeaderSIGKILL(t *testing.T) {
	const total, kills = 200, 5
	rs := []*proc.Node{proc.New(t, proc.Options{Name: "A"}), proc.New(t, proc.Options{Name: "B"}), proc.New(t, proc.Options{Name: "C"})}
	members := []*proc.Node{proc.New(t, proc.Options{Name: "D"}), proc.New(t, proc.Options{Name: "E"}), proc.New(t, proc.Options{Name: "F"})}
	all, apps := startGroup(t, rs, members)
	groupLeader(t, rs)

	// The request of each fifth of the run at which the leader is killed,
	// and how long into that request's accept.
	seed := time.Now().UnixNano()
	rnd := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("kill points drawn with seed %d", seed)
	every := total / kills
	killAt := map[int]time.Duration{}
	for k := range kills {
		killAt[k*every+rnd.IntN(every)] = time.Duration(rnd.IntN(40)) * time.Millisecond
	}

	var origins []string
	var afterKill []time.Duration
	for i := range total {
		var r struct {
			OK      bool
			Request review.Row
			Error   any
		}
		m, err := apps[i%len(apps)].Request("ferry.review.submit", fmt.Appendf(nil, `{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p%d"}}`, i+1, i+1), 10*time.Second)
		if err != nil || json.Unmarshal(m.Data, &r) != nil || !r.OK {
			t.Fatalf("submit %d: %v %+v", i, err, r)
		}
		origins = append(origins, r.Request.Origin)
		at := rs[i%3]
		for !at.Running() {
			at = rs[(slices.Index(rs, at)+1)%3]
		}
		delay, kill := killAt[i]
		if !kill {
			acceptIn(t, at, r.Request.Origin)
			continue
		}
		l := groupLeader(t, rs)
		// The kill runs beside one try of the accept at at (which may be
		// the leader): whatever that try answered, or did not, the accept
		// is then asked of a reviewer that runs until the row is accepted.
		killed := make(chan time.Time, 1)
		time.AfterFunc(delay, func() {
			_ = syscall.Kill(l.Pid(), syscall.SIGKILL)
			killed <- time.Now()
		})
		acceptOnce(t, at, r.Request.Origin)
		k := <-killed
		l.Kill() // reaps it
		if at == l {
			at = rs[(slices.Index(rs, l)+1)%3]
		}
		acceptIn(t, at, r.Request.Origin)
		afterKill = append(afterKill, time.Since(k))
		l.Start()
	}

	// Every node holds every request accepted, under one sequence each,
	// the same everywhere: 1..total; every reviewer's rows sended.
	sameDecisions(t, all, origins)
	acksSended(t, rs)
	t.Logf("%d requests from three members decided at three reviewers with the leader SIGKILLed %d times: each decided once, sequences 1..%d on all six nodes, every reviewer's rows sended; "+
		"from a kill to the next decision on disk: %v", total, len(afterKill), total, afterKill)
}

// sameDecisions waits until every node holds each of origins accepted,
// under the same sequence on every node, the sequences 1..len(origins)
// (no sequence with two decisions); it returns the sequences by origin.
func sameDecisions(t *testing.T, all []*proc.Node, origins []string) map[string]uint64 {
	t.Helper()
	var want map[string]uint64
	wait.Until(t, 2*time.Minute, "every decision on every node under one sequence", func() error {
		want = nil
		for _, n := range all {
			rows, err := groupRequests(t, n)
			if err != nil {
				return err
			}
			got := map[string]uint64{}
			for _, x := range rows {
				if x.Status == "accepted" {
					got[x.Origin] = x.Sequence
				}
			}
			if len(got) != len(origins) {
				return fmt.Errorf("%s holds %d requests accepted, want %d", n.Name(), len(got), len(origins))
			}
			for _, o := range origins {
				if got[o] == 0 {
					return fmt.Errorf("%s does not hold %s accepted", n.Name(), o)
				}
			}
			if want == nil {
				want = got
				continue
			}
			for o, s := range want {
				if got[o] != s {
					return fmt.Errorf("%s holds %s under sequence %d, %s under %d", n.Name(), o, got[o], all[0].Name(), s)
				}
			}
		}
		var seqs []uint64
		for _, s := range want {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		for i, s := range seqs {
			if s != uint64(i+1) {
				return fmt.Errorf("sequences are not 1..%d: %v", len(origins), seqs)
			}
		}
		return nil
	})
	return want
}

// acksSended waits until every acknowledgement row of every reviewer in rs
// is sended: each decision reached every member (and each request's
// applicant its own).
func acksSended(t *testing.T, rs []*proc.Node) {
	t.Helper()
	wait.Until(t, 3*time.Minute, "every reviewer's acknowledgement rows sended", func() error {
		for _, r := range rs {
			first, err := r.PendingDecisionAck()
			if err != nil {
				return err
			}
			if first != "" {
				return fmt.Errorf("%s has decision rows pending (first: %s)", r.Name(), first)
			}
		}
		return nil
	})
}
