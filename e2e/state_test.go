package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// state renders what must be equal on every node: every resource (creator,
// id, JSON, deleted), the rows of the given tables, and every applied
// request row by origin (status, sequence, data, description).
func state(t *testing.T, n *node.Node, tables ...string) string {
	t.Helper()
	var lines []string
	rs, err := n.Store().Resources("")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		lines = append(lines, fmt.Sprintf("resource %s/%s/%s deleted=%v %s", r.DataType, peer.ID(r.Creator), r.Id, r.Deleted, r.Json))
	}
	for _, tb := range tables {
		rows, err := n.Store().Rows(tb)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range rows {
			lines = append(lines, fmt.Sprintf("row %s/%d %s", tb, row.ID, row.JSON))
		}
	}
	reqs, err := n.Review().Requests("")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if r.Status == "waiting" || r.Status == "rejected" {
			continue // local to the applicant and the reviewer
		}
		lines = append(lines, fmt.Sprintf("request %s %s seq=%d %s %s/%s", r.Origin, r.Status, r.Sequence, r.Data, r.Description.Sender, r.Description.Receiver))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// waitConverged waits until every running node's state equals node 0's.
func waitConverged(t *testing.T, net *testnet.Net, nodes []int, timeout time.Duration, tables ...string) string {
	t.Helper()
	var ref string
	wait.Until(t, timeout, "every node holds the same state", func() error {
		ref = state(t, net.Node(nodes[0]), tables...)
		for _, i := range nodes[1:] {
			if got := state(t, net.Node(i), tables...); got != ref {
				return fmt.Errorf("node %d differs from node %d: %s", i, nodes[0], stateDiff(ref, got))
			}
		}
		return nil
	})
	return ref
}

// stateDiff names what one state holds that the other does not (a few lines).
func stateDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var onlyA, onlyB []string
	for l := range ma {
		if !mb[l] && len(onlyA) < 5 {
			onlyA = append(onlyA, l)
		}
	}
	for l := range mb {
		if !ma[l] && len(onlyB) < 5 {
			onlyB = append(onlyB, l)
		}
	}
	return fmt.Sprintf("%d lines vs %d; only in the first: %q; only in the second: %q", len(ma), len(mb), onlyA, onlyB)
}
