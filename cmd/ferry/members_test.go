package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// TestMembersCommands: `ferry members remove` (the binary, as an operator
// runs it) on the reviewer closes the pending acknowledgement row of a
// member it cannot reach, with the reason, in `ferry acks list` and
// `ferry members list` as in the admin API; the node itself, the reviewer
// and a peer id that is none are refused with the reason; `ferry members
// add` lets the member back.
func TestMembersCommands(t *testing.T) {
	const nA, nB, nC = 0, 1, 2
	net := testnet.Start(t, testnet.Options{N: 3, Reviewer: testnet.At(nC)})
	net.WaitMembers(30 * time.Second)
	home := func(i int) string { return net.Homes[i].Dir }
	b := net.IDs[nB].String()

	// B is cut off from both others: its row of the decision waits (cut
	// from the reviewer alone, it would get the decision by gossip and
	// report through A).
	net.Node(nC).CutLink(net.IDs[nB])
	net.Node(nA).CutLink(net.IDs[nB])
	mustFerry(t, "--home", home(nA), "submit", "insert", "tb", "1", `{"name":"one"}`)
	var id string
	testnet.WaitFor(t, 20*time.Second, "C holds the request", func() bool {
		var rows []review.Row
		if err := json.Unmarshal([]byte(mustFerry(t, "--home", home(nC), "requests", "list", "--status", "waiting", "--json")), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) == 1 {
			id = strconv.FormatUint(rows[0].ID, 10)
		}
		return id != ""
	})
	mustFerry(t, "--home", home(nC), "requests", "accept", id)
	var rowsOut string
	defer func() {
		if t.Failed() {
			members, err := ferry(t, "--home", home(nC), "members", "list")
			t.Logf("C's rows of the decision when the test failed:\n%s\nC's members (%v):\n%s\nconnections per node: %v",
				rowsOut, err, members, net.ConnsPerNode())
		}
	}()
	testnet.WaitFor(t, 20*time.Second, "C's row for B is pending, A's sended", func() bool {
		rowsOut = mustFerry(t, "--home", home(nC), "acks", "list", "--request", id)
		return strings.Contains(rowsOut, " B ") && strings.Contains(rowsOut, "pending") && strings.Contains(rowsOut, "sended")
	})

	for _, c := range []struct{ peer, want string }{
		{net.IDs[nC].String(), "a node cannot remove itself"},
		{"nobody", `"nobody" is not a peer id`},
	} {
		if out, err := ferry(t, "--home", home(nC), "members", "remove", c.peer); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("members remove %s: %v (want %q)\n%s", c.peer, err, c.want, out)
		} else {
			checkWords(t, "members remove "+c.peer, err.Error())
		}
	}
	if out, err := ferry(t, "--home", home(nA), "members", "remove", net.IDs[nC].String()); err == nil || !strings.Contains(err.Error(), "the reviewer cannot be removed") {
		t.Errorf("members remove of the reviewer at A: %v\n%s", err, out)
	}

	// The binary, as an operator runs it (in-process with -short).
	var out string
	if testing.Short() {
		out = mustFerry(t, "--home", home(nC), "members", "remove", b)
	} else {
		bin := buildFerry(t)
		r := runBin(t, bin, time.Minute, "--home", home(nC), "members", "remove", net.IDs[nC].String())
		noPanic(t, r)
		if r.code == 0 || !strings.Contains(r.stderr, "a node cannot remove itself") {
			t.Fatalf("ferry members remove (itself): exit %d, stderr %q", r.code, r.stderr)
		}
		r = runBin(t, bin, time.Minute, "--home", home(nC), "members", "remove", b)
		if r.code != 0 {
			t.Fatalf("ferry members remove B: exit %d, stderr %q", r.code, r.stderr)
		}
		out = r.stdout
	}
	if !strings.HasPrefix(out, "member B ("+b+"): removed: member removed by the operator at ") {
		t.Fatalf("members remove printed %q", out)
	}
	out = mustFerry(t, "--home", home(nC), "acks", "list", "--state", "closed")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[0], "REASON") ||
		!strings.Contains(lines[1], " B ") || !strings.Contains(lines[1], "closed") || !strings.Contains(lines[1], "member removed by the operator at ") {
		t.Fatalf("acks list --state closed:\n%s", out)
	}
	var page node.AckPage
	if err := json.Unmarshal([]byte(mustFerry(t, "--home", home(nC), "acks", "list", "--state", "closed", "--json")), &page); err != nil ||
		len(page.Rows) != 1 || page.Rows[0].Ack != node.AckClosed || !strings.HasPrefix(page.Rows[0].Reason, "member removed by the operator at ") {
		t.Fatalf("acks list --state closed --json: %+v %v", page, err)
	}
	if out := mustFerry(t, "--home", home(nC), "acks", "list", "--pending"); strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("pending rows after B's removal:\n%s", out)
	}
	out = mustFerry(t, "--home", home(nC), "members", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "A ") || !strings.Contains(lines[1], "member") ||
		!strings.HasPrefix(lines[2], "B ") || !strings.Contains(lines[2], "removed") || !strings.Contains(lines[2], "member removed by the operator at ") {
		t.Fatalf("members list:\n%s", out)
	}
	var rows []node.MemberRow
	if err := json.Unmarshal([]byte(mustFerry(t, "--home", home(nC), "members", "list", "--json")), &rows); err != nil || len(rows) != 2 ||
		rows[1].PeerID != b || rows[1].State != "removed" || rows[1].LeftAt.IsZero() || rows[0].RecordExpiresAt.Before(time.Now().Add(23*time.Hour)) {
		t.Fatalf("members list --json: %+v %v", rows, err)
	}

	// Back: B is a member again and gets what it was owed.
	net.Node(nC).HealLink(net.IDs[nB])
	net.Node(nA).HealLink(net.IDs[nB])
	if out := mustFerry(t, "--home", home(nC), "members", "add", b); !strings.HasPrefix(out, "member B ("+b+"): a member") {
		t.Fatalf("members add printed %q", out)
	}
	testnet.WaitFor(t, 30*time.Second, "C's row for B is sended", func() bool {
		out := mustFerry(t, "--home", home(nC), "acks", "list", "--request", id, "--receiver", "B")
		return strings.Contains(out, "sended")
	})
}
