package consoletest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
	"github.com/ferrynet/ferry/reviewgroup"
)

// groupTiming is the review group's raft timing here: a lost leader is
// replaced in about a second.
var groupTiming = reviewgroup.Timing{HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
	LeaderLeaseTimeout: 150 * time.Millisecond, CommitTimeout: 20 * time.Millisecond}

// leaderOf waits until the reviewers rs agree on a leader among them and
// returns its index.
func leaderOf(t *testing.T, net *testnet.Net, rs ...int) int {
	t.Helper()
	at := -1
	testnet.WaitFor(t, step, "a leader of the review group", func() bool {
		var l peer.ID
		for _, i := range rs {
			p, ok := net.Node(i).ReviewGroup().Leader()
			if !ok || (l != "" && p != l) {
				return false
			}
			l = p
		}
		at = slices.Index(net.IDs, l)
		return slices.Contains(rs, at)
	})
	return at
}

// submitAt submits body at node i and returns the request's origin.
func submitAt(t *testing.T, net *testnet.Net, i int, body string) string {
	t.Helper()
	var out struct {
		OK      bool
		Request struct{ Origin string }
		Error   any
	}
	testnet.Request(t, net.NATS(i), "ferry.review.submit", body, &out)
	if !out.OK {
		t.Fatalf("submit %s: %v", body, out.Error)
	}
	return out.Request.Origin
}

// idAt waits until node at holds the request of origin and returns its id
// there.
func idAt(t *testing.T, net *testnet.Net, at int, origin string) uint64 {
	t.Helper()
	var id uint64
	testnet.WaitFor(t, step, fmt.Sprintf("node %d holds %s", at, origin), func() bool {
		r, err := net.Node(at).Review().RequestByOrigin(origin)
		id = r.ID
		return err == nil
	})
	return id
}

// headerChip is one reviewer's chip in the console's header.
type headerChip struct {
	Name, Text, Class string
}

// TestConsoleReviewGroupInBrowser: the console of a follower reviewer of a
// group of three (review.approvals 2) shows the group in its header (each
// reviewer, which one leads, each one's state, lag and last contact), a
// real waiting request with one of two approvals (accepted at another
// reviewer) that the second accept in the page decides, "approved by you"
// after the page's own first approval, the new leader after the leader
// stops, and a red warning once this node is cut off from the majority. A
// member's status carries no group.
func TestConsoleReviewGroupInBrowser(t *testing.T) {
	exe := chromium(t)
	const member = 3
	net := testnet.Start(t, testnet.Options{N: 4, Reviewers: []int{0, 1, 2}, Node: node.Options{ReviewGroupTiming: groupTiming},
		Configure: func(_ int, c *node.Config) { c.Review.Approvals = 2 }})
	net.WaitMembers(30 * time.Second)
	leader := leaderOf(t, net, 0, 1, 2)
	here, other := (leader+1)%3, (leader+2)%3
	name := func(i int) string { return net.Config(i).Name }
	if st := net.Node(member).Status(); st.ReviewGroup != nil {
		t.Fatalf("a member's status shows a review group: %+v", st.ReviewGroup)
	}
	token, err := net.Homes[here].Token()
	if err != nil {
		t.Fatal(err)
	}

	b := openBrowser(t, exe, 3*time.Minute)
	chips := func() []headerChip {
		t.Helper()
		raw, _ := b.eval("the group's chips", `JSON.stringify([...document.querySelectorAll("#group .rv")].map((e) =>
			({Name: e.dataset.name, Text: e.textContent, Class: e.className})))`).(string)
		var out []headerChip
		if err := json.Unmarshal([]byte(raw), &out); err != nil {
			t.Fatalf("chips: %v (%q)", err, raw)
		}
		return out
	}
	chipOf := func(cs []headerChip, n string) headerChip {
		for _, c := range cs {
			if c.Name == n {
				return c
			}
		}
		b.shot("failed")
		t.Fatalf("the header has no chip for %s: %+v", n, cs)
		return headerChip{}
	}
	// leads waits until the header names want as the leader.
	leads := func(want string) {
		t.Helper()
		b.poll("the header names "+want+" as the leader", fmt.Sprintf(`(() => { const l = document.querySelectorAll("#group .rv.leader");
			return l.length === 1 && l[0].dataset.name === %q; })()`, want))
	}

	// The header: three reviewers, the leader marked, this node a follower
	// in contact with it, no warning.
	if err := chromedpOpen(b, net.Node(here).AdminAddr(), token); err != nil {
		t.Fatalf("open the console: %v", err)
	}
	b.waitText("#who", "reviewer")
	b.poll("the group in the header", `(() => { const g = document.querySelector("#group"); return !!g && !g.hidden && g.textContent.includes("review group"); })()`)
	leads(name(leader))
	b.poll("every follower answered", `[...document.querySelectorAll("#group .rv")].filter((e) => / follower, /.test(e.textContent)).length === 2`)
	cs := chips()
	if len(cs) != 3 {
		t.Fatalf("the header shows %d reviewers, want 3: %+v", len(cs), cs)
	}
	if c := chipOf(cs, name(leader)); !strings.Contains(c.Text, "leader, applied ") {
		t.Fatalf("the leader's chip: %+v", c)
	}
	for _, i := range []int{here, other} {
		c := chipOf(cs, name(i))
		if !strings.Contains(c.Text, "follower, ") || !strings.Contains(c.Text, "contact ") || strings.Contains(c.Class, "leader") ||
			(!strings.Contains(c.Text, "in step") && !strings.Contains(c.Text, " behind")) {
			t.Fatalf("follower %s's chip: %+v", name(i), c)
		}
		if (i == here) != strings.Contains(c.Text, "(this node)") {
			t.Fatalf("chip %+v: (this node) should mark %s only", c, name(here))
		}
	}
	if b.visible("#group-warning") || strings.Contains(b.text("body"), "cut off") {
		b.shot("failed")
		t.Fatalf("a warning with the whole group up: %s", b.text("#group"))
	}
	b.fits("the queue with the group in the header")
	b.shot("20-group-header")

	// A real request with one of two approvals: accepted at the other
	// follower, it waits here with that approval shown and the accept
	// button offered; the page's accept is the second and decides it.
	origin := submitAt(t, net, member, `{"type":"insert","table_name":"tb","table_id":1,"data":{"name":"one"},"description":"two needed"}`)
	first := idAt(t, net, here, origin)
	decided := make(chan error, 1)
	net.Node(other).Decide(review.DecideRequest{RequestID: idAt(t, net, other, origin), Decision: "accept"},
		func(_ review.Row, err error) { decided <- err })
	if err := <-decided; err != nil {
		t.Fatalf("the first approval at %s: %v", name(other), err)
	}
	card := fmt.Sprintf("#req-%d", first)
	b.run("refresh", chromedp.Click(chromedp.CSS("#refresh")))
	b.waitText(card+" .approvals", "approvals 1 of 2: "+name(other)+" at ")
	b.waitText(card+" .approvals", "waiting for 1 more")
	if !b.visible(fmt.Sprintf("#accept-%d", first)) || b.visible(fmt.Sprintf("#approved-%d", first)) {
		b.shot("failed")
		t.Fatalf("the request approved at %s only offers no accept here: %s", name(other), b.text(card))
	}
	b.shot("21-group-one-of-two")
	b.press(fmt.Sprintf("#accept-%d", first))
	b.run("confirm the second approval", chromedp.WaitVisible(chromedp.CSS("#confirm")), chromedp.Click(chromedp.CSS("#confirm-ok")))
	b.waitText("#messages", fmt.Sprintf("Request %d accepted", first))
	testnet.WaitFor(t, step, "the member holds the decision", func() bool {
		r, err := net.Node(member).Review().RequestByOrigin(origin)
		return err == nil && r.Status == "accepted" && r.Sequence > 0
	})

	// The page's own first approval: the request waits, "approved by you".
	second := idAt(t, net, here, submitAt(t, net, member, `{"type":"insert","table_name":"tb","table_id":2,"data":{"name":"two"}}`))
	b.run("refresh", chromedp.Click(chromedp.CSS("#refresh")))
	b.press(fmt.Sprintf("#accept-%d", second))
	b.run("confirm the first approval", chromedp.WaitVisible(chromedp.CSS("#confirm")), chromedp.Click(chromedp.CSS("#confirm-ok")))
	b.waitText("#messages", fmt.Sprintf("Request %d approved by you, waiting for 1 more", second))
	b.waitText(fmt.Sprintf("#approved-%d", second), "approved by you, waiting for 1 more")
	b.waitText(fmt.Sprintf("#req-%d .approvals", second), "approvals 1 of 2: "+name(here)+" at ")

	// The leader stops: the header names the new one, the old one does
	// not answer.
	net.Stop(leader)
	next := leaderOf(t, net, here, other)
	leads(name(next))
	b.poll("the stopped leader not answering", fmt.Sprintf(`(() => { const e = document.querySelector('#group .rv[data-name=%q]');
		return !!e && e.classList.contains("down") && e.textContent.includes("not answering"); })()`, name(leader)))
	if b.visible("#group-warning") {
		b.shot("failed")
		t.Fatalf("a warning with two of three reviewers up: %s", b.text("#group"))
	}
	b.shot("22-group-new-leader")

	// The other reviewer stops too: this one is cut off, and says so.
	net.Stop(other)
	b.waitText("#group-warning", "cut off: this node reaches 1 of 3 reviewers")
	b.poll("the group line in its warning state", `document.querySelector("#group").classList.contains("warn")`)
	b.fits("the header with the group's warning")
	b.shot("23-group-cut-off")
}

// chromedpOpen opens the console of the node at addr, signed in with token
// (the link `ferry run` prints carries it the same way). The first call
// starts the browser: no step timeout on it.
func chromedpOpen(b *browser, addr, token string) error {
	return chromedp.Do(b.ctx, chromedp.Navigate("http://"+addr+"/#token="+token), chromedp.WaitVisible(chromedp.CSS("#tabs")))
}
