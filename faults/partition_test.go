package faults

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/review"
)

// The partition lab: every node runs in a network namespace of its own
// (`ip netns exec`), on a veth pair to one bridge in a namespace of the
// lab; the test process reaches the nodes' admin APIs and NATS through a
// veth from its own namespace to the bridge. A link between two nodes is
// cut with blackhole routes inside both namespaces, so every other link
// (a member to each reviewer, the test to each node) stays up.
const (
	// labPrefix names every namespace and link of the lab: a run removes
	// what a crashed run left by this prefix.
	labPrefix = "ferrypart-"
	// labHostLink is the test's own end of the veth to the bridge (an
	// interface name holds at most 15 bytes).
	labHostLink = "ferrypart-host"
	// labNet is the lab's private /24: node i is labNet.(i+1), the test
	// .254.
	labNet = "10.77.0."
	// labLock serialises runs of the lab on this machine (its names are
	// fixed).
	labLock = "/tmp/ferry-partition-lab.lock"
)

// lab is the namespaces of one run.
type lab struct {
	t *testing.T
}

// ip runs `ip args...` and fails the test on an error.
func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// labNamespaces lists the lab's namespaces present now.
func labNamespaces() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var ns []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], labPrefix) {
			ns = append(ns, f[0])
		}
	}
	return ns
}

// removeLab deletes every namespace and link of the lab (a veth goes with
// its namespace's end).
func removeLab() error {
	var errs []error
	for _, ns := range labNamespaces() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, out))
		}
	}
	if exec.Command("ip", "link", "show", labHostLink).Run() == nil {
		if out, err := exec.Command("ip", "link", "del", labHostLink).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip link del %s: %v: %s", labHostLink, err, out))
		}
	}
	return errors.Join(errs...)
}

// newLab builds a bridge namespace and n node namespaces, or skips the test
// when this process cannot (not root, no `ip netns`). It removes what a
// crashed run left, and everything it made at cleanup, whatever the test's
// outcome.
func newLab(t *testing.T, n int) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the partition test needs root: it makes network namespaces (ip netns) and veth links")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the partition test needs iproute2's ip command (ip netns): not found")
	}
	lock, err := os.OpenFile(labLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lock.Close() })
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := removeLab(); err != nil {
		t.Fatalf("remove a previous run's lab: %v", err)
	}
	probe := labPrefix + "probe"
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("the partition test needs ip netns, which fails here: %v: %s", err, out)
	}
	l := &lab{t: t}
	t.Cleanup(func() {
		if err := removeLab(); err != nil {
			t.Errorf("remove the lab: %v", err)
		}
	})
	l.ip("netns", "del", probe)
	br := labPrefix + "br"
	l.ip("netns", "add", br)
	l.ip("-n", br, "link", "add", "br0", "type", "bridge")
	l.ip("-n", br, "link", "set", "br0", "up")
	for i := range n {
		ns, port := labNS(i), fmt.Sprintf("p%d", i)
		l.ip("netns", "add", ns)
		l.ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", br, "link", "set", port, "master", "br0", "up")
		l.ip("-n", ns, "addr", "add", labAddr(i)+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
	}
	l.ip("link", "add", labHostLink, "type", "veth", "peer", "name", "host", "netns", br)
	l.ip("-n", br, "link", "set", "host", "master", "br0", "up")
	l.ip("addr", "add", labNet+"254/24", "dev", labHostLink)
	l.ip("link", "set", labHostLink, "up")
	return l
}

func labNS(i int) string   { return fmt.Sprintf("%s%d", labPrefix, i) }
func labAddr(i int) string { return fmt.Sprintf("%s%d", labNet, i+1) }

// node makes a `ferry run` child in node i's namespace, listening on its
// address there.
func (l *lab) node(i int, name string) *proc.Node {
	return proc.New(l.t, proc.Options{Name: name, Host: labAddr(i), Wrap: []string{"ip", "netns", "exec", labNS(i)}})
}

// cut drops every packet between node a and each of others (blackhole
// routes in both namespaces); heal takes the routes away again.
func (l *lab) cut(a int, others ...int) {
	for _, o := range others {
		l.ip("-n", labNS(a), "route", "add", "blackhole", labAddr(o)+"/32")
		l.ip("-n", labNS(o), "route", "add", "blackhole", labAddr(a)+"/32")
	}
}

func (l *lab) heal(a int, others ...int) {
	for _, o := range others {
		l.ip("-n", labNS(a), "route", "del", "blackhole", labAddr(o)+"/32")
		l.ip("-n", labNS(o), "route", "del", "blackhole", labAddr(a)+"/32")
	}
}

// requestID is reviewer r's own id of the request of origin.
func requestID(t *testing.T, r *proc.Node, origin string) uint64 {
	t.Helper()
	var id uint64
	wait.Until(t, 30*time.Second, r.Name()+" holds "+origin, func() error {
		rows, err := groupRequests(t, r)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(rows, func(x review.Row) bool { return x.Origin == origin })
		if i < 0 {
			return fmt.Errorf("%s does not hold %s yet", r.Name(), origin)
		}
		id = rows[i].ID
		return nil
	})
	return id
}

// answer is what an operator's act got back.
type answer struct {
	code    int
	errCode string
	msg     string
	took    time.Duration
	err     error
}

// act has reviewer r's operator act on its request id through the admin
// API once (act: accept or edit, body its JSON). It touches no
// testing.T: a goroutine may run it.
func act(r *proc.Node, id uint64, act string, body []byte) answer {
	start := time.Now()
	code, out, err := r.Do(http.MethodPost, fmt.Sprintf("/api/v1/requests/%d/%s", id, act), body, nil)
	a := answer{code: code, msg: string(out), took: time.Since(start), err: err}
	var rep struct {
		Error *struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(out, &rep) == nil && rep.Error != nil {
		a.errCode, a.msg = rep.Error.Code, rep.Error.Message
	}
	return a
}

// unavailable reports whether a is the answer of a member cut off from
// its group's majority.
func (a answer) unavailable() bool {
	return a.err == nil && a.code != http.StatusOK && a.errCode == "unavailable" && strings.Contains(a.msg, "review group")
}

// statusAt is the status and deciding reviewer of origin's row on n.
func statusAt(t *testing.T, n *proc.Node, origin string) (string, string) {
	t.Helper()
	rows, err := groupRequests(t, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range rows {
		if x.Origin == origin {
			return x.Status, x.Reviewer
		}
	}
	return "", ""
}

// TestReviewGroupPartitionedLeader: three reviewers and two members, each
// a `ferry run` child in a network namespace of its own. The group's
// leader is cut from the other two reviewers (blackhole routes; the members
// still reach every reviewer): an accept and an edit at the cut-off leader
// are answered unavailable naming the group, and what it was asked is never
// decided (nor signed) by anyone; the other two elect a leader and decide
// requests at either of them; after the heal the old leader follows and
// catches up, and every node holds the same decisions under the same
// sequences, with no equivocation reported anywhere and every reviewer's
// acknowledgement rows sended. The figures: from the cut to the
// majority's first decision, and from the heal to the old leader holding
// every decision.
func TestReviewGroupPartitionedLeader(t *testing.T) {
	l := newLab(t, 5)
	var nodes []*proc.Node
	for i, name := range []string{"A", "B", "C", "D", "E"} {
		nodes = append(nodes, l.node(i, name))
	}
	rs, members := nodes[:3], nodes[3:]
	all, apps := startGroup(t, rs, members)
	submit := func(i int) string {
		t.Helper()
		var r struct {
			OK      bool
			Request review.Row
			Error   any
		}
		m, err := apps[i%len(apps)].Request("ferry.review.submit", fmt.Appendf(nil, `{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p%d"}}`, i, i), 10*time.Second)
		if err != nil || json.Unmarshal(m.Data, &r) != nil || !r.OK {
			t.Fatalf("submit %d: %v %+v", i, err, r)
		}
		return r.Request.Origin
	}
	leader := groupLeader(t, rs)
	li := slices.Index(rs, leader)
	var majority []*proc.Node
	var mi []int
	for i, r := range rs {
		if r != leader {
			majority, mi = append(majority, r), append(mi, i)
		}
	}
	// One decision before the cut: the group works.
	decided := []string{submit(1)}
	acceptIn(t, leader, decided[0])

	// The requests the cut-off leader is asked about are in every
	// reviewer's ledger first (members send them to each).
	asked := submit(2)
	for _, r := range rs {
		wait.Until(t, 30*time.Second, asked+" waiting at "+r.Name(), func() error {
			if st, _ := statusAt(t, r, asked); st != "waiting" {
				return fmt.Errorf("%s holds %s as %q", r.Name(), asked, st)
			}
			return nil
		})
	}

	// And one a follower is asked to accept at the cut: it may still take
	// the old leader for the leader and forward to it, over a link that
	// now drops every packet; it answers once it sees the leader change
	// (the forward is given up, the act asked again under its id), and
	// the request is decided once, by the majority.
	atFollower := submit(6)
	for _, r := range rs {
		wait.Until(t, 30*time.Second, atFollower+" waiting at "+r.Name(), func() error {
			if st, _ := statusAt(t, r, atFollower); st != "waiting" {
				return fmt.Errorf("%s holds %s as %q", r.Name(), atFollower, st)
			}
			return nil
		})
	}
	atFollowerID := requestID(t, majority[0], atFollower)

	askedID := requestID(t, leader, asked)
	l.cut(li, mi...)
	cutAt := time.Now()
	second := make(chan answer, 1)
	go func() { second <- act(majority[0], atFollowerID, "accept", nil) }()
	t.Logf("cut %s (the leader) from %s and %s", leader.Name(), majority[0].Name(), majority[1].Name())
	// At once, while it may still think it leads (for its lease), the old
	// leader is asked to accept; meanwhile the majority elects a leader
	// and decides, at either of its two (the follower forwards to the new
	// leader; the follower asked at the cut is above).
	first := make(chan answer, 1)
	go func() { first <- act(leader, askedID, "accept", nil) }()
	newLeader := groupLeader(t, majority)
	toLeader := time.Since(cutAt)
	follower := majority[0]
	if follower == newLeader {
		follower = majority[1]
	}
	during := []string{submit(3), submit(4)}
	acceptIn(t, follower, during[0])
	toDecide := time.Since(cutAt)
	acceptIn(t, newLeader, during[1])
	decided = append(decided, during...)

	if a := <-second; a.err != nil || a.code != http.StatusOK {
		t.Fatalf("accept at the follower %s, asked at the cut: %+v, want it accepted by the majority", majority[0].Name(), a)
	} else {
		t.Logf("accept at the follower %s, asked at the cut, answered after %v (the new leader was known %v after the cut)",
			majority[0].Name(), a.took.Round(time.Millisecond), toLeader.Round(time.Millisecond))
	}
	decided = append(decided, atFollower)

	// The old leader answered unavailable, naming the group; once it
	// stepped down an edit is answered so too.
	if a := <-first; !a.unavailable() {
		t.Fatalf("accept at the cut-off leader %s: %+v, want unavailable naming the review group", leader.Name(), a)
	} else {
		t.Logf("accept at the cut-off leader, asked at the cut, answered after %v: %d %s: %s", a.took.Round(time.Millisecond), a.code, a.errCode, a.msg)
	}
	wait.For(t, 30*time.Second, leader.Name()+" steps down", func() bool {
		return metricOf(t, leader, "ferry_review_group_is_leader") == 0
	})
	if a := act(leader, askedID, "edit", []byte(`{"data":{"name":"edited at the old leader"}}`)); !a.unavailable() {
		t.Fatalf("edit at the cut-off leader %s: %+v, want unavailable naming the review group", leader.Name(), a)
	} else {
		t.Logf("edit at the cut-off leader answered after %v: %d %s: %s", a.took.Round(time.Millisecond), a.code, a.errCode, a.msg)
	}
	// The old leader holds none of them decided, and still holds what it
	// was asked waiting.
	for _, o := range during {
		if st, _ := statusAt(t, leader, o); st != "waiting" {
			t.Fatalf("the cut-off %s holds %s as %q during the partition", leader.Name(), o, st)
		}
	}

	l.heal(li, mi...)
	healAt := time.Now()
	wait.Until(t, time.Minute, leader.Name()+" holds every decision after the heal", func() error {
		for _, o := range decided {
			if st, _ := statusAt(t, leader, o); st != "accepted" {
				return fmt.Errorf("%s holds %s as %q", leader.Name(), o, st)
			}
		}
		return nil
	})
	caughtUp := time.Since(healAt)
	// The old leader takes part again: an accept there (forwarded to the
	// leader, or its own if it leads again) decides.
	after := submit(5)
	acceptIn(t, leader, after)
	decided = append(decided, after)

	seqs := sameDecisions(t, all, decided)
	acksSended(t, rs)
	// What the cut-off leader was asked was never decided, by it or anyone:
	// no node holds a decision of it (and so none signed by it).
	for _, n := range all {
		// The reviewers and its applicant hold it waiting; the other
		// member never saw it.
		st, _ := statusAt(t, n, asked)
		if want := slices.Contains(rs, n) || n == members[0]; (want && st != "waiting") || (!want && st != "") {
			t.Fatalf("%s holds %s (asked at the cut-off leader) as %q", n.Name(), asked, st)
		}
		for _, o := range during {
			if _, by := statusAt(t, n, o); by == leader.Name() {
				t.Fatalf("%s holds %s, decided during the partition, as decided by the cut-off %s", n.Name(), o, leader.Name())
			}
		}
		if v := metricOf(t, n, `ferry_delivery_received_total{outcome="equivocation"}`); v != 0 {
			t.Fatalf("%s counted %v equivocations", n.Name(), v)
		}
		if strings.Contains(n.StderrAll(), "equivocation") {
			t.Fatalf("%s logged an equivocation:\n%s", n.Name(), n.Stderr())
		}
	}
	t.Logf("leader %s cut from %s, %s: its accept and edit answered unavailable, the request left waiting on all five nodes; %s led the majority; "+
		"cut -> the majority's leader: %v, -> its first decision (at the follower %s): %v; heal -> %s holds every decision: %v; sequences %v the same on all five nodes, no equivocation, every reviewer's rows sended",
		leader.Name(), majority[0].Name(), majority[1].Name(), newLeader.Name(), toLeader.Round(time.Millisecond), follower.Name(), toDecide.Round(time.Millisecond), leader.Name(), caughtUp.Round(time.Millisecond), seqs)
}
