package node_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestEventsAreKeptWithoutAWatcher (issue 21, point 3): the node keeps its
// last 256 events whether or not anyone watches; a watcher that connects
// later gets them first, committed ones with their receivers. Before,
// events were recorded only while a watcher was connected.
func TestEventsAreKeptWithoutAWatcher(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Names: []string{"A", "B"}, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	for _, id := range []string{"vm1", "vm2", "vm3"} {
		if e := natsReq(t, net.NATS(0), msg("ferry.propagate", `{"action":"create","data_type":"vm","payload":{"id":"`+id+`"}}`)); !e.OK {
			t.Fatal(e.Error)
		}
	}
	testnet.WaitFor(t, 20*time.Second, "B applied the three", func() bool {
		rs, _ := net.Node(1).Resources("vm")
		return len(rs) == 3
	})
	token, err := net.Homes[0].Token()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+net.Node(0).AdminAddr()+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	committed := map[string][]string{}
	acked := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && (len(committed) < 3 || acked == 0) {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var e node.Event
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			t.Fatalf("event %s: %v", data, err)
		}
		switch e.Type {
		case node.EventCommitted:
			committed[e.Detail] = e.To
		case node.EventAcked:
			acked++
		}
	}
	for _, id := range []string{"vm1", "vm2", "vm3"} {
		if to := committed["vm "+id]; len(to) != 1 || to[0] != "B" {
			t.Fatalf("kept committed events: %v (want vm %s -> [B])", committed, id)
		}
	}
}
