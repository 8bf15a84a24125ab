package e2e

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// copyDir copies a directory tree (a backup of a stopped node's home).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.RemoveAll(to); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// TestRestoredOriginLosesNothing: A's home is copied while A is stopped; A
// runs on, sends 500 creates (they reach B), stops, and its home is put back
// from the copy. A then sends 500 more: none of them reuses a version B
// holds, every one reaches B's apps, and A takes back the 500 changes its
// store lost from B, so its resources are whole again.
func TestRestoredOriginLosesNothing(t *testing.T) {
	net := testnet.Start(t, partnersAB())
	net.WaitMembers(20 * time.Second)
	b := net.NATS(1)
	c := collect(t, b, "ferry.resource.created.>")
	want := okIDs(t, pipeline(t, net.NATS(0), 0, 10, 8, "create"), 0)
	testnet.WaitFor(t, 30*time.Second, "B has the first 10", func() bool { return c.count() == 10 })

	net.Stop(0)
	backup := t.TempDir() + "/backup"
	copyDir(t, net.Homes[0].Dir, backup)
	net.Restart(0)
	for id := range okIDs(t, pipeline(t, net.NATS(0), 10, 500, 64, "create"), 10) {
		want[id] = true
	}
	testnet.WaitFor(t, 60*time.Second, "B has 510", func() bool { return c.count() == 510 })

	net.Stop(0)
	copyDir(t, backup, net.Homes[0].Dir) // the restore
	net.Restart(0)
	for id := range okIDs(t, pipeline(t, net.NATS(0), 510, 500, 64, "create"), 510) {
		want[id] = true
	}
	testnet.WaitFor(t, 60*time.Second, "B publishes all 1010", func() bool { return c.count() >= 1010 })
	testnet.WaitFor(t, 60*time.Second, "A takes back what its store lost", func() bool {
		rs, _ := net.Node(0).Resources("vm")
		return len(rs) == 1010
	})
	testnet.WaitFor(t, 30*time.Second, "A's deliveries all acknowledged", func() bool { return pendingAt(net, 0) == 0 })
	_ = c.sub.Unsubscribe()
	checkExactlyOnceInOrder(t, c.snapshot(), want)
	if n := metric(t, net.Node(1), "ferry_delivery_received_total", map[string]string{"outcome": "equivocation"}); n != 0 {
		t.Fatalf("B refused %v changes as equivocations", n)
	}
	p, err := net.Node(0).Acks(node.AckQuery{State: node.AckRejected})
	if err != nil || len(p.Rows) != 0 {
		t.Fatalf("A's rejected rows: %v %v", p.Rows, err)
	}
}
