package e2e

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
)

// faultEvents is 10,000 events; FERRY_SOAK=1 (make soak-faults) runs ten times as many.
var faultEvents = func() int {
	if os.Getenv("FERRY_SOAK") != "" {
		return 100000
	}
	return 10000
}()

func partnersAB() testnet.Options {
	return testnet.Options{N: 2, Partners: map[int][]int{0: {1}, 1: {0}}}
}

func okIDs(t *testing.T, rs []reply, from int) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for i, r := range rs {
		if !r.OK {
			t.Fatalf("request %d: %+v", from+i, r.Error)
		}
		ids[fmt.Sprintf("vm-%d", from+i)] = true
	}
	return ids
}

// pendingAt counts the changes node i's receivers have not acknowledged.
func pendingAt(net *testnet.Net, i int) int { return net.Node(i).Status().PendingAcks }

// settle waits until A has nothing pending (no resend can come) and B's app
// saw want events, then checks them.
func settle(t *testing.T, net *testnet.Net, c *collector, want map[string]bool) {
	t.Helper()
	testnet.WaitFor(t, 120*time.Second, fmt.Sprintf("B publishes %d events", len(want)), func() bool { return c.count() >= len(want) })
	testnet.WaitFor(t, 60*time.Second, "A's deliveries all acknowledged", func() bool { return pendingAt(net, 0) == 0 })
	// A round trip on B's connection flushes anything still on its way.
	_ = c.sub.Unsubscribe()
	checkExactlyOnceInOrder(t, c.snapshot(), want)
}

func TestFaultReceiverStoppedThenRestarted(t *testing.T) {
	net := testnet.Start(t, partnersAB())
	net.WaitMembers(20 * time.Second)
	a, b := net.NATS(0), net.NATS(1)
	net.Stop(1)
	want := okIDs(t, pipeline(t, a, 0, faultEvents, 256, "create"), 0)
	if p := pendingAt(net, 0); p != faultEvents {
		t.Fatalf("A holds %d pending deliveries while B is down, want %d", p, faultEvents)
	}
	start := net.RestartPaused(1)
	testnet.WaitFor(t, 10*time.Second, "the app reconnects to B's NATS", b.IsConnected)
	c := collect(t, b, "ferry.resource.created.>")
	start()
	settle(t, net, c, want)
}

func TestFaultLinkCutAndHealed(t *testing.T) {
	net := testnet.Start(t, partnersAB())
	net.WaitMembers(20 * time.Second)
	a, b := net.NATS(0), net.NATS(1)
	c := collect(t, b, "ferry.resource.created.>")
	// Half before the cut, half while cut.
	want := okIDs(t, pipeline(t, a, 0, faultEvents/2, 256, "create"), 0)
	net.Node(0).CutLink(net.IDs[1])
	net.Node(1).CutLink(net.IDs[0])
	for id := range okIDs(t, pipeline(t, a, faultEvents/2, faultEvents/2, 256, "create"), faultEvents/2) {
		want[id] = true
	}
	net.Node(0).HealLink(net.IDs[1])
	net.Node(1).HealLink(net.IDs[0])
	settle(t, net, c, want)
}

func TestFaultSenderRestartedMidStream(t *testing.T) {
	net := testnet.Start(t, partnersAB())
	net.WaitMembers(20 * time.Second)
	b := net.NATS(1)
	c := collect(t, b, "ferry.resource.created.>")
	a := net.NATS(0)
	want := okIDs(t, pipeline(t, a, 0, faultEvents/2, 256, "create"), 0)
	// Restart A while its deliveries are still streaming to B.
	testnet.WaitFor(t, 30*time.Second, "B has started receiving", func() bool { return c.count() > 0 })
	net.Restart(0)
	testnet.WaitFor(t, 10*time.Second, "the app reconnects to A's NATS", a.IsConnected)
	for id := range okIDs(t, pipeline(t, a, faultEvents/2, faultEvents/2, 256, "create"), faultEvents/2) {
		want[id] = true
	}
	settle(t, net, c, want)
}
