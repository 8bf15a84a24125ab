package main

import (
	"testing"
	"time"

	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/reviewgroup"
)

// TestGroupLine: `ferry status` names the leader and how each reviewer of
// the group stands, the one that does not answer with why.
func TestGroupLine(t *testing.T) {
	at := time.Date(2026, 1, 2, 12, 0, 1, 0, time.UTC)
	gs := &node.GroupStatus{Leader: "12D3KooWB", LeaderName: "B", Servers: []reviewgroup.Server{
		{Name: "A", Self: true, Status: &reviewgroup.Status{State: "Follower", AppliedIndex: 12}},
		{Name: "B", Leader: true, LastHeard: at, Status: &reviewgroup.Status{State: "Leader", AppliedIndex: 12}},
		{Name: "C", Error: "dial backoff"},
	}}
	want := "leader B; A (this node): follower, applied 12; B: leader, applied 12, heard 2026-01-02T12:00:01Z; C: not answering (dial backoff)"
	if got := groupLine(&globals{absolute: true}, gs); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if got := groupLine(&globals{}, &node.GroupStatus{Error: "review group A, B, C: not started"}); got != "no leader known; review group A, B, C: not started" {
		t.Fatalf("no leader: %q", got)
	}
}
