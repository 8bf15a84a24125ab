package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/internal/testnet"
)

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestRepliesSayWhatHappened: the replies that surprised a new user.
// B updating A's resource (it holds A's copy) is not_owner naming A, not
// not_found; a considers or planner reply's id is the id its payload names
// (none when it names none) and version the change's version;
// close_planner answers the peer whose stream it closed and no id or
// version, since it writes no change.
func TestRepliesSayWhatHappened(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 2, Partners: map[int][]int{0: {1}, 1: {0}}})
	net.WaitMembers(20 * time.Second)
	a, b := net.NATS(0), net.NATS(1)
	A, B := net.IDs[0].String(), net.IDs[1].String()
	w := &words{t: t}

	must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"vm2","cpu":1}}`)
	testnet.WaitFor(t, 20*time.Second, "B holds A's vm2", func() bool {
		r, err := net.Node(1).Store().Resource("vm", net.IDs[0], "vm2")
		return err == nil && !r.Deleted
	})
	for _, action := range []string{"update", "delete"} {
		body := fmt.Sprintf(`{"action":%q,"data_type":"vm","payload":{"id":"vm2","cpu":2}}`, action)
		r := ask(t, b, body)
		if r.OK || r.Error == nil || r.Error.Code != "not_owner" {
			t.Fatalf("B's %s of A's vm2: %+v, want not_owner", action, r.Error)
		}
		want := fmt.Sprintf(`vm "vm2" was created by A (%s); this node holds its partner's copy, and only the creator may %s it`, A, action)
		if !strings.HasSuffix(r.Error.Message, want) {
			t.Errorf("B's %s of A's vm2 says %q, want ...%q", action, r.Error.Message, want)
		}
		w.check(action+" of a partner's resource", r.Error.Message, body)
	}
	// A resource nobody holds is still not_found.
	if r := ask(t, b, `{"action":"update","data_type":"vm","payload":{"id":"nowhere"}}`); r.OK || r.Error.Code != "not_found" {
		t.Fatalf("update of a missing id: %+v, want not_found", r.Error)
	}
	// The owner's own update goes on.
	must(t, a, `{"action":"update","data_type":"vm","payload":{"id":"vm2","cpu":3}}`)

	// considers and planner: id as the payload names it, version the change's.
	for _, tc := range []struct {
		body, id string
	}{
		{fmt.Sprintf(`{"action":"considers","data_type":"exec","payload":{"peer_ids":[%q],"id":"job-7","step":1}}`, B), "job-7"},
		{fmt.Sprintf(`{"action":"considers","data_type":"exec","payload":{"peer_ids":[%q],"step":2}}`, B), ""},
		{fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q,"id":42,"slot":7}}`, B), "42"},
	} {
		out := natsAnswer(t, a, "ferry.propagate", tc.body)
		ver, _ := out["version"].(float64)
		if out["ok"] != true || ver <= 0 {
			t.Fatalf("%s: %v", tc.body, out)
		}
		id, hasID := out["id"]
		if tc.id == "" && hasID {
			t.Errorf("%s: the reply has id %v, but the payload names none", tc.body, id)
		}
		if tc.id != "" && id != tc.id {
			t.Errorf("%s: id %v, want %q (the payload's)", tc.body, id, tc.id)
		}
		if s, ok := id.(string); ok && s == fmt.Sprint(uint64(ver)) {
			t.Errorf("%s: id is the version again", tc.body)
		}
	}
	out := natsAnswer(t, a, "ferry.propagate", fmt.Sprintf(`{"action":"close_planner","payload":{"peer_id":%q}}`, B))
	if got := keys(out); !slices.Equal(got, []string{"closed", "ok", "peer_id"}) || out["peer_id"] != B || out["ok"] != true {
		t.Fatalf("close_planner answered %v (keys %v), want ok, peer_id %s and closed only", out, got, B)
	}
}
