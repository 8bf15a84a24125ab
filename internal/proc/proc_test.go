package proc_test

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/internal/leaks"
	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// TestMain removes the built binary, and fails the package if its tests
// leave a goroutine behind (a process watcher of a node not stopped).
func TestMain(m *testing.M) {
	code := proc.Main(m)
	if code == 0 {
		if err := goleak.Find(leaks.Options()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: Errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

type reply struct {
	OK      bool `json:"ok"`
	Version uint64
	Changes []struct {
		Version uint64 `json:"version"`
	} `json:"changes"`
	Error *struct{ Code, Message string } `json:"error"`
}

func request(t *testing.T, nc *nats.Conn, subj, body string) reply {
	t.Helper()
	msg, err := nc.Request(subj, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subj, err)
	}
	var r reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatalf("%s answered %s", subj, msg.Data)
	}
	return r
}

// TestProcessLifecycle starts two partner processes, sends creates, SIGKILLs
// and restarts the origin on the same ports, and stops both with SIGTERM.
func TestProcessLifecycle(t *testing.T) {
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	for _, n := range []*proc.Node{a, b} {
		c, err := node.LoadFile(n.Home().ConfigPath())
		if err != nil {
			t.Fatal(err)
		}
		for _, addr := range append(append([]string{}, c.Listen...), c.NATS.Listen, c.Admin.Listen) {
			if !strings.Contains(addr, "127.0.0.1") || strings.HasSuffix(addr, ":4222") || strings.HasSuffix(addr, ":7480") || strings.HasSuffix(addr, "/4001") {
				t.Fatalf("node %s has address %s: want 127.0.0.1 on a free port", n.Name(), addr)
			}
		}
	}
	a.Start()
	b.Start()

	nb, err := nats.Connect(b.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	got := make(chan struct{}, 100)
	sub, err := nb.Subscribe("ferry.resource.created.vm", func(*nats.Msg) { got <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nb.Flush(); err != nil {
		t.Fatal(err)
	}

	na, err := nats.Connect(a.NATSURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	for i := range 5 {
		r := request(t, na, "ferry.propagate", fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"vm-%d"}}`, i))
		if !r.OK {
			t.Fatalf("create %d: %+v", i, r.Error)
		}
	}
	a.Kill()
	if a.Running() {
		t.Fatal("A runs after Kill")
	}
	a.Restart()
	testnet.WaitFor(t, 10*time.Second, "the app reconnects to A", na.IsConnected)
	if r := request(t, na, "ferry.changes", `{"since":0}`); !r.OK || len(r.Changes) != 5 {
		t.Fatalf("A after SIGKILL and restart holds %d changes, want 5 (%+v)", len(r.Changes), r.Error)
	}
	deadline := time.After(30 * time.Second)
	for i := range 5 {
		select {
		case <-got:
		case <-deadline:
			t.Fatalf("B published %d of 5 creates", i)
		}
	}
	code, body, err := a.Get("/api/v1/status")
	if err != nil || code != 200 || !strings.Contains(string(body), a.PeerID().String()) {
		t.Fatalf("A's status: %d %v %s", code, err, body)
	}
	if code := a.Term(10 * time.Second); code != 0 {
		t.Fatalf("A exited %d after SIGTERM, want 0:\n%s", code, a.Stderr())
	}
	if code := b.Term(10 * time.Second); code != 0 {
		t.Fatalf("B exited %d after SIGTERM, want 0:\n%s", code, b.Stderr())
	}
	if !strings.Contains(a.StderrAll(), "ferry node stopped") {
		t.Fatalf("A's stderr does not say it stopped:\n%s", a.Stderr())
	}
}
