package e2e

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
)

// guideSubjects reads the subject templates docs/apps.md names in
// backquotes (`ferry.resource.created|updated|deleted.<data_type>`) as
// patterns, and the request subjects it gives a section of their own.
func guideSubjects(t *testing.T) (patterns map[string]*regexp.Regexp, sections []string) {
	t.Helper()
	doc, err := os.ReadFile("../docs/apps.md")
	if err != nil {
		t.Fatal(err)
	}
	patterns = map[string]*regexp.Regexp{}
	placeholder := regexp.MustCompile(`<[^>]+>`)
	for _, m := range regexp.MustCompile("`(ferry\\.(?:<[^>`]+>|[^`\\s<])+)`").FindAllStringSubmatch(string(doc), -1) {
		tmpl := m[1]
		var parts []string
		wild := false
		for _, tok := range strings.Split(placeholder.ReplaceAllStringFunc(tmpl, func(p string) string { return strings.ReplaceAll(p, ".", "") }), ".") {
			switch {
			case tok == ">" || tok == "*":
				wild = true // a subscription example, not a subject
			case strings.HasPrefix(tok, "<") && strings.HasSuffix(tok, ">"):
				parts = append(parts, `[^.]+`)
			default:
				alts := strings.Split(tok, "|")
				for i, a := range alts {
					alts[i] = regexp.QuoteMeta(a)
				}
				parts = append(parts, "(?:"+strings.Join(alts, "|")+")")
			}
		}
		if !wild {
			patterns[tmpl] = regexp.MustCompile("^" + strings.Join(parts, `\.`) + "$")
		}
	}
	for _, m := range regexp.MustCompile("(?m)^### `(ferry\\.[^`]+)`").FindAllStringSubmatch(string(doc), -1) {
		sections = append(sections, m[1])
	}
	if len(patterns) == 0 || len(sections) == 0 {
		t.Fatal("docs/apps.md names no subjects")
	}
	return patterns, sections
}

// subjectLog keeps every subject seen on one node's NATS under the prefix.
type subjectLog struct {
	mu   sync.Mutex
	seen map[string]bool
}

func logSubjects(t *testing.T, nc *nats.Conn) *subjectLog {
	l := &subjectLog{seen: map[string]bool{}}
	if _, err := nc.Subscribe("ferry.>", func(m *nats.Msg) {
		l.mu.Lock()
		l.seen[m.Subject] = true
		l.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *subjectLog) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.seen {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func (l *subjectLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.seen))
	for s := range l.seen {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestAppsGuideCoversEverySubject runs every app flow on three nodes (A and
// B partners, C the reviewer) and fails if the node serves or publishes a
// subject docs/apps.md does not name, or the guide documents a request
// subject no node serves.
func TestAppsGuideCoversEverySubject(t *testing.T) {
	patterns, sections := guideSubjects(t)
	const nA, nB, nC = 0, 1, 2
	net := testnet.Start(t, testnet.Options{N: 3, Partners: map[int][]int{nA: {nB}, nB: {nA}}, Reviewer: testnet.At(nC),
		Configure: func(i int, c *node.Config) { c.Review.NATSDecide = i == nC }})
	net.WaitMembers(30 * time.Second)
	a, b, c := net.NATS(nA), net.NATS(nB), net.NATS(nC)
	logs := []*subjectLog{logSubjects(t, a), logSubjects(t, b), logSubjects(t, c)}
	idB := net.IDs[nB].String()

	for _, body := range []string{
		`{"action":"create","data_type":"vm","payload":{"id":"vm1","name":"guide vm"}}`,
		`{"action":"update","data_type":"vm","payload":{"id":"vm1","name":"guide vm 2"}}`,
		`{"action":"create","data_type":"vm","payload":{"id":"vm2","name":"guide vm"}}`,
		`{"action":"delete","data_type":"vm","payload":{"id":"vm2"}}`,
		fmt.Sprintf(`{"action":"considers","data_type":"exec","payload":{"peer_ids":[%q]}}`, idB),
		fmt.Sprintf(`{"action":"planner","data_type":"plan","payload":{"peer_id":%q}}`, idB),
		fmt.Sprintf(`{"action":"close_planner","payload":{"peer_id":%q}}`, idB),
	} {
		must(t, a, body)
	}
	var sub struct {
		OK      bool
		Request struct{ ID uint64 }
	}
	testnet.Request(t, a, "ferry.review.submit",
		`{"type":"insert","table_name":"tb1","table_id":3,"data":{"unique_num":40123,"name":"name3"},"description":"guide"}`, &sub)
	if !sub.OK {
		t.Fatal("submit refused")
	}
	testnet.WaitFor(t, 20*time.Second, "the request at the reviewer", func() bool { return logs[nC].has("ferry.review.requested") })
	var waiting []uint64
	testnet.WaitFor(t, 20*time.Second, "the request waiting at the reviewer", func() bool {
		rows, err := net.Node(nC).Review().Requests("waiting")
		waiting = waiting[:0]
		for _, r := range rows {
			waiting = append(waiting, r.ID)
		}
		return err == nil && len(waiting) == 1
	})
	var dec struct{ OK bool }
	testnet.Request(t, c, "ferry.review.decide", fmt.Sprintf(`{"request_id":%d,"decision":"accept"}`, waiting[0]), &dec)
	if !dec.OK {
		t.Fatal("decide refused")
	}
	testnet.Request(t, b, "ferry.changes", `{"since":0}`, &struct{}{})
	created := must(t, a, `{"action":"create","data_type":"vm","payload":{"id":"vm3"}}`)
	testnet.Request(t, a, "ferry.delivery.wait", fmt.Sprintf(`{"version":%d,"timeout_ms":20000}`, created.Version), &struct{}{})
	testnet.Request(t, a, "ferry.delivery.status", fmt.Sprintf(`{"version":%d}`, created.Version), &struct{}{})
	must(t, b, `{"action":"search","data_type":"vm","payload":{"type":"partner","search":"guide","query_id":"guide1","wait_ms":2000}}`)

	for _, w := range []struct {
		node   int
		prefix string
	}{
		{nB, "ferry.resource.created.vm"}, {nB, "ferry.resource.updated.vm"}, {nB, "ferry.resource.deleted.vm"},
		{nB, "ferry.considers.exec"}, {nB, "ferry.planner.plan"}, {nB, "ferry.search.result.guide1"},
		{nA, "ferry.delivery.acked." + net.IDs[nB].String()},
		{nA, "ferry.review.decided.tb1"}, {nB, "ferry.review.decided.tb1"}, {nC, "ferry.review.decided.tb1"},
	} {
		testnet.WaitFor(t, 20*time.Second, fmt.Sprintf("node %d publishes %s", w.node, w.prefix), func() bool { return logs[w.node].has(w.prefix) })
	}

	covered := func(s string) bool {
		for _, re := range patterns {
			if re.MatchString(s) {
				return true
			}
		}
		return false
	}
	served := map[string]bool{}
	for i := range 3 {
		for _, s := range net.Node(i).ServedSubjects() {
			served[s] = true
			if !covered(s) {
				t.Errorf("node %d serves %s: docs/apps.md does not document it", i, s)
			}
		}
		for _, s := range logs[i].all() {
			if !covered(s) {
				t.Errorf("node %d published %s: docs/apps.md does not document it", i, s)
			}
		}
	}
	for _, s := range sections {
		if !served[s] {
			t.Errorf("docs/apps.md documents the request subject %s, which no node serves", s)
		}
	}
}

// TestAppsGuideExamplesAreTheBuiltOnes: the nats.go programs of
// docs/apps.md are docs/examples/*/main.go, which `go vet ./...` builds.
func TestAppsGuideExamplesAreTheBuiltOnes(t *testing.T) {
	doc, err := os.ReadFile("../docs/apps.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range []string{"app", "durable"} {
		src, err := os.ReadFile("../docs/examples/" + ex + "/main.go")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(doc), "```go\n"+string(src)+"```") {
			t.Errorf("docs/apps.md's nats.go program differs from docs/examples/%s/main.go: change both together", ex)
		}
	}
}
