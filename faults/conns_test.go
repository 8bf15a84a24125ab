package faults

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/review"
)

// TestReviewerConnectionsBoundedWhileDecisionsFlow: 30 `ferry run`
// processes (60 and 1,000 decisions under make faults), node 0 the
// reviewer and everyone's bootstrap, with connections.max 12. Once every
// node knows every member and the start's connections are trimmed, 150
// decisions go out while every node's open connections are sampled every
// second: no node, the reviewer included, ever holds more than
// connections.max (before the members' reports went up through their
// neighbours the reviewer held one from each member; before the DHT's
// dials took room and the keeper trimmed at once, the DHT walks of the
// first advertisements took 35 of 60 nodes above it, the reviewer to 24,
// until their next discovery round), and every member's
// acknowledgement rows at the reviewer turn sended (decisions reach the
// members by gossip, their reports the reviewer through neighbours).
func TestReviewerConnectionsBoundedWhileDecisionsFlow(t *testing.T) {
	const maxConns, neighbours = 12, 4
	n, decisions := pick(30, 60), pick(150, 1000)
	var nodes []*proc.Node
	for i := range n {
		nodes = append(nodes, proc.New(t, proc.Options{Name: fmt.Sprintf("n%02d", i), LogLevel: "warn"}))
	}
	rev := nodes[0]
	for _, x := range nodes {
		x.Configure(func(c *node.Config) {
			c.Reviewer = rev.PeerID().String()
			c.Connections.Max, c.Connections.Neighbours = maxConns, neighbours
		})
		if x != rev {
			x.SetBootstrap(rev)
		}
	}
	start := time.Now()
	for _, x := range nodes {
		x.Start()
	}
	wait.Until(t, 3*time.Minute, "every node knows every member", func() error {
		for _, x := range nodes {
			if k := metricOf(t, x, "ferry_members_known"); k != float64(n) {
				return fmt.Errorf("%s knows %v members of %d", x.Name(), k, n)
			}
		}
		return nil
	})
	members := time.Since(start)
	// The start is over when every node is within the bound: each joining
	// node dialed the bootstrap (the reviewer), which lets them go after
	// its trim grace.
	wait.Until(t, 3*time.Minute, "every node within connections.max", func() error {
		for _, x := range nodes {
			if c := metricOf(t, x, "ferry_connections"); c > maxConns || c < 0 {
				return fmt.Errorf("%s holds %v connections", x.Name(), c)
			}
		}
		return nil
	})
	settled := time.Since(start)

	// Sample every node's connections while the decisions go out.
	stop := make(chan struct{})
	var mu sync.Mutex
	most := map[string]float64{}
	samples := map[string]int{}
	var over []string
	var wg sync.WaitGroup
	// Each node is sampled on its own, every second (a look reads its
	// /metrics, a few milliseconds of the process's CPU: one loop over 30
	// nodes took a second and a half; every 250 ms each, the looks slowed
	// the burst sixfold, every 500 ms fivefold).
	for _, x := range nodes {
		wg.Go(func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				c := metricOf(t, x, "ferry_connections")
				mu.Lock()
				most[x.Name()] = max(most[x.Name()], c)
				samples[x.Name()]++
				if c > maxConns {
					over = append(over, fmt.Sprintf("%s %v at %s", x.Name(), c, time.Now().Format("15:04:05.000")))
				}
				mu.Unlock()
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
	}
	nc := connect(t, rev.NATSURL())
	burst := time.Now()
	for i := range decisions {
		var r struct {
			OK      bool
			Request review.Row
		}
		m, err := nc.Request("ferry.review.submit", fmt.Appendf(nil, `{"type":"insert","table_name":"places","table_id":%d,"data":{"name":"p%d"}}`, i+1, i+1), 10*time.Second)
		if err != nil || json.Unmarshal(m.Data, &r) != nil || !r.OK {
			t.Fatalf("submit %d: %v", i, err)
		}
		code, body, err := rev.Do(http.MethodPost, fmt.Sprintf("/api/v1/requests/%d/accept", r.Request.ID), nil, nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("accept %d: %d %s %v", r.Request.ID, code, body, err)
		}
	}
	decided := time.Since(burst)
	acksSended(t, []*proc.Node{rev})
	sended := time.Since(burst)
	close(stop)
	wg.Wait()
	peak, fewest, above := 0.0, -1, 0
	var each []string
	for _, x := range nodes {
		peak = max(peak, most[x.Name()])
		if most[x.Name()] > maxConns {
			above++
		}
		if fewest < 0 || samples[x.Name()] < fewest {
			fewest = samples[x.Name()]
		}
		each = append(each, fmt.Sprintf("%s %v", x.Name(), most[x.Name()]))
	}
	t.Logf("%d processes, connections.max %d: full membership %v after the first start, within the bound %v after it; %d decisions made in %v, every row sended %v after the first; "+
		"at least %d samples of each node: the reviewer's most %v, any node's most %v (%d nodes above the bound at some sample); the reviewer opened %v delivery streams, closed %v connections to make room for its own dials (delivery, neighbours), waited for room %v times and dialed past the bound %v times; each node's most: %s",
		n, maxConns, members.Round(time.Millisecond), settled.Round(time.Millisecond), decisions, decided.Round(time.Millisecond), sended.Round(time.Millisecond),
		fewest, most[rev.Name()], peak, above, metricOf(t, rev, "ferry_delivery_stream_opens_total"), metricOf(t, rev, "ferry_connections_closed_for_room_total"), metricOf(t, rev, "ferry_delivery_room_waits_total"), metricOf(t, rev, "ferry_delivery_room_forced_total"), strings.Join(each, ", "))
	if len(over) > 0 {
		// What the nodes above the bound held (peers.Keeper.warnOver).
		for _, x := range nodes {
			if most[x.Name()] <= maxConns {
				continue
			}
			for _, l := range strings.Split(x.StderrAll(), "\n") {
				if strings.Contains(l, "above connections.max") || strings.Contains(l, "connections.max for this long") {
					t.Logf("%s: %s", x.Name(), l)
				}
			}
		}
		t.Fatalf("connections above connections.max (%d) while decisions flowed (node by node, every second): %v", maxConns, over)
	}
}
