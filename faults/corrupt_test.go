package faults

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
)

// readChanges reads a node's change log through ferry.changes page after
// page, and returns the changes, or the first error code and message.
func readChanges(t *testing.T, nc *nats.Conn) ([]change, string, string) {
	t.Helper()
	var all []change
	var since uint64
	for {
		m, err := nc.Request("ferry.changes", fmt.Appendf(nil, `{"since":%d,"limit":10000}`, since), 30*time.Second)
		if err != nil {
			t.Fatalf("ferry.changes since %d: %v", since, err)
		}
		var page struct {
			OK      bool     `json:"ok"`
			Changes []change `json:"changes"`
			Next    uint64   `json:"next"`
			More    bool     `json:"more"`
			Error   *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(m.Data, &page); err != nil {
			t.Fatalf("ferry.changes since %d: %v %.300s", since, err, m.Data)
		}
		if !page.OK {
			if page.Error == nil {
				t.Fatalf("ferry.changes since %d: not ok and no error: %.300s", since, m.Data)
			}
			return all, page.Error.Code, page.Error.Message
		}
		all = append(all, page.Changes...)
		if len(page.Changes) == 0 || !page.More {
			return all, "", ""
		}
		since = page.Next
	}
}

// resourceSST names the largest sst of a stopped node that holds resource
// rows (keys under r/), as Pebble's manifest says.
func resourceSST(t *testing.T, n *proc.Node) (string, int64) {
	t.Helper()
	dir := n.Home().DataPath()
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s read-only: %v", dir, err)
	}
	defer db.Close()
	levels, err := db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	best, size := "", int64(0)
	for _, level := range levels {
		for _, f := range level {
			if string(f.Smallest.UserKey) < "r0" && string(f.Largest.UserKey) >= "r/" && int64(f.Size) > size {
				best, size = filepath.Join(dir, fmt.Sprintf("%s.sst", f.FileNum)), int64(f.Size)
			}
		}
	}
	if best == "" {
		t.Fatalf("no sst of %s holds resource rows", dir)
	}
	return best, size
}

// readPebbleLists reads A's resource rows and acknowledgement rows (both
// in Pebble; the changes are in the change log) through the admin API,
// page by page: the number of resources, and the first error's code and
// message.
func readPebbleLists(t *testing.T, n *proc.Node) (int, string, string) {
	t.Helper()
	count := 0
	for _, list := range []string{"resources", "acks"} {
		after := ""
		for {
			path := "/api/v1/" + list + "?limit=1000"
			if after != "" {
				cursor := "after"
				if list == "acks" {
					cursor = "before" // acks go newest first
				}
				path += "&" + cursor + "=" + url.QueryEscape(after)
			}
			_, body, err := n.Get(path)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			var page struct {
				OK        bool              `json:"ok"`
				Resources []json.RawMessage `json:"resources"`
				Rows      []json.RawMessage `json:"acks"`
				Next      json.RawMessage   `json:"next"`
				Error     *struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &page); err != nil {
				t.Fatalf("GET %s: %v %.300s", path, err, body)
			}
			if !page.OK {
				if page.Error == nil {
					t.Fatalf("GET %s: not ok and no error: %.300s", path, body)
				}
				return count, page.Error.Code, page.Error.Message
			}
			if list == "resources" {
				count += len(page.Resources)
			}
			var next string
			if json.Unmarshal(page.Next, &next) != nil || next == "" || len(page.Resources)+len(page.Rows) == 0 {
				break
			}
			after = next
		}
	}
	return count, "", ""
}

// TestCorruptSST writes 4 KiB of random bytes into the middle of an sst of
// a stopped node A (its partner B holds every change of A), then starts A.
// The sst holds what Pebble keeps (resource rows, delivery records: the
// changes themselves are in the change log). A says so: an ERROR line
// naming the file, /healthz 503 with the reason, and the listings over the
// damaged range answer `corrupt` (not `unavailable`, which apps retry).
// After a restart A rebuilds its store from what is readable and takes its
// changes back from B, putting back the rows the rebuild lost: every
// acknowledged create is listed again, ferry.changes reads them all and
// /healthz is 200. (Issue 16, point 3: A started healthy, and reads
// answered `unavailable` on every call with no log line.)
func TestCorruptSST(t *testing.T) {
	total := pick(6000, 30000)
	a := proc.New(t, proc.Options{Name: "A"})
	b := proc.New(t, proc.Options{Name: "B"})
	proc.Partners(a, b)
	a.Start()
	b.Start()
	app := connect(t, a.NATSURL())
	var progress atomic.Int64
	// 2 KiB documents (in the change log; Pebble holds their rows).
	acked, _ := sendAllPad(t, app, "c", total, 64, 2048, &progress)
	testnet.WaitFor(t, 2*time.Minute, "B acknowledged every change of A", func() bool { return pendingAcks(t, a) == 0 })
	// A restart flushes what the log (WAL) held into an sst.
	if code := a.Term(30 * time.Second); code != 0 {
		t.Fatalf("A exited with %d", code)
	}
	a.Start()
	if code := a.Term(30 * time.Second); code != 0 {
		t.Fatalf("A exited with %d", code)
	}
	sst, size := resourceSST(t, a)
	junk := make([]byte, 4096)
	_, _ = rand.Read(junk)
	f, err := os.OpenFile(sst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Where in the file the rows are is Pebble's business: 4 KiB at each
	// sixth of it damages some of them.
	for i := int64(1); i <= 5; i++ {
		if _, err := f.WriteAt(junk, size*i/6); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote 4 KiB of random bytes at each sixth of %s (%d bytes)", filepath.Base(sst), size)

	a.Start()
	got, code, msg := readPebbleLists(t, a)
	if code != "corrupt" {
		t.Fatalf("the listings over the damaged sst: %d resources read, then code %q (%s); want corrupt", got, code, msg)
	}
	// Asked again: the same answer, not a transient one.
	if _, code2, _ := readPebbleLists(t, a); code2 != "corrupt" {
		t.Fatalf("the listings asked again: code %q, want corrupt", code2)
	}
	file := filepath.Base(sst)
	hc, hb := a.Healthz()
	if hc != 503 || !strings.Contains(hb, "corrupt") || !strings.Contains(hb, file) {
		t.Fatalf("/healthz of the corrupt store: %d %q; want 503 naming the corruption and %s", hc, hb, file)
	}
	errLine := regexp.MustCompile(`(?m)^.*level=ERROR.*corrupt.*` + regexp.QuoteMeta(file) + `.*$`)
	line := errLine.FindString(a.StderrAll())
	if line == "" {
		t.Fatalf("no ERROR line naming %s in A's log:\n%s", file, a.Stderr())
	}
	t.Logf("%d resources read before the damage; %s: %.200s", got, code, msg)
	t.Logf("/healthz: %d %.300s", hc, hb)
	t.Logf("log: %.400s", line)

	// Repair: a restart rebuilds the store and takes the lost range back from B.
	if code := a.Term(30 * time.Second); code != 0 {
		t.Fatalf("A exited with %d", code)
	}
	start := time.Now()
	a.Start()
	app = connect(t, a.NATSURL())
	var last string
	testnet.WaitFor(t, 2*time.Minute, "A lists all its resources again", func() bool {
		n, code, msg := readPebbleLists(t, a)
		last = fmt.Sprintf("%d resources, code %q %.200s", n, code, msg)
		return code == "" && n == len(acked)
	})
	checkDelivered(t, "A", mustChanges(t, app), a.PeerID().String(), acked)
	if hc, hb := a.Healthz(); hc != 200 {
		t.Fatalf("/healthz after the repair: %d %q", hc, hb)
	}
	rebuilt := regexp.MustCompile(`(?m)^.*msg="store rebuilt.*$`).FindString(a.StderrAll())
	repaired := regexp.MustCompile(`(?m)^.*msg="store repaired.*$`).FindString(a.StderrAll())
	if rebuilt == "" || repaired == "" {
		t.Fatalf("A's log does not say that it rebuilt its store and took its changes back from B:\n%s", a.Stderr())
	}
	t.Logf("repaired in %v: %s; /healthz 200", time.Since(start).Round(time.Millisecond), last)
	t.Logf("log: %.500s", rebuilt)
	t.Logf("log: %.500s", repaired)
}

func mustChanges(t *testing.T, nc *nats.Conn) []change {
	t.Helper()
	cs, code, msg := readChanges(t, nc)
	if code != "" {
		t.Fatalf("ferry.changes: %s %s", code, msg)
	}
	return cs
}
