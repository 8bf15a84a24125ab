package interop

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/ferrynet/ferry/internal/leaks"
	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/node"
)

// TestMain removes the ferry binary proc built and fails the package if a
// test leaves a goroutine behind (the js peer's readers stop with it).
func TestMain(m *testing.M) {
	code := proc.Main(m)
	if code == 0 {
		if err := goleak.Find(leaks.Options()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Bounds of the test's waits: generous for a loaded CI machine; each
// returns as soon as its condition holds.
const (
	eventTimeout = 30 * time.Second
	jsReady      = 30 * time.Second
)

// TestJSPeer runs the js-libp2p peer beside `ferry run` node A, which lists
// it in ferry.yaml as a partner with its address (A's only way to reach it:
// it runs no identify, no hello and no membership), and checks:
//
//  1. as a partner, it receives A's creates, checks and acknowledges them:
//     A's delivery.wait says it acked every one, it applied each once, and
//     A resent nothing (ferry_delivery_resent_total 0);
//  2. as an origin, its own signed creates are applied by A: the NATS events
//     ferry.resource.created.vm name it as origin and carry its documents;
//  3. a create with a tampered root signature is refused (A resets the
//     stream, the js peer sees it, and nothing of it is applied), and so is
//     a batch A applied already sent again with a tampered signature (a
//     root verified before is checked again when its signature differs);
//     a good create after them is applied, so the lane still works;
//
// and that A logs no `failed to identify peer` warning for a peer without
// identify. Last, the partner is given by `ferry partners add MULTIADDR`
// instead of the config, and the address is kept across a restart.
func TestJSPeer(t *testing.T) {
	js := newJSPeer(t)
	a := proc.New(t, proc.Options{Name: "A", Configure: func(c *node.Config) {
		c.Partners = []string{js.addr}
	}})
	js.start(a.Multiaddr())
	a.Start()

	nc, err := nats.Connect(a.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	created, err := nc.SubscribeSync("ferry.resource.created.vm")
	if err != nil {
		t.Fatal(err)
	}

	// 1. A -> js: three creates, each acknowledged by the js peer.
	var versions []uint64
	for i := range 3 {
		versions = append(versions, propagate(t, nc, fmt.Sprintf("a-%d", i)))
	}
	for i := range 3 {
		js.waitEvent(t, fmt.Sprintf("the js peer applied a-%d", i), func(e event) bool {
			return e.Event == "received" && e.ID == fmt.Sprintf("a-%d", i)
		})
	}
	// A's acknowledgement rows (derived from the js peer's ack floor) say
	// sended for each create.
	wait.Until(t, eventTimeout, "A's acknowledgement rows say the js peer acked every create", func() error {
		status, body, err := a.Get("/api/v1/acks?receiver=" + js.id.String())
		if err != nil || status != 200 {
			return fmt.Errorf("GET /api/v1/acks: %d %v %s", status, err, body)
		}
		var page struct {
			Acks []struct {
				ReceiverID string `json:"receiver_id"`
				Version    uint64 `json:"version"`
				Ack        string `json:"ack"`
			} `json:"acks"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return err
		}
		acked := map[uint64]bool{}
		for _, r := range page.Acks {
			if r.ReceiverID == js.id.String() && r.Ack == "sended" {
				acked[r.Version] = true
			}
		}
		for _, v := range versions {
			if !acked[v] {
				return fmt.Errorf("version %d not acked: %s", v, body)
			}
		}
		return nil
	})
	for i := range 3 {
		if n := js.count(func(e event) bool { return e.Event == "received" && e.ID == fmt.Sprintf("a-%d", i) }); n != 1 {
			t.Fatalf("the js peer applied a-%d %d times", i, n)
		}
	}
	if n := metric(t, a, "ferry_delivery_resent_total"); n != "0" {
		t.Fatalf("A resent %s entries to a partner that acknowledged everything", n)
	}

	// 2. js -> A: two creates in one signed tree.
	js.command(t, map[string]any{"cmd": "send", "data_type": "vm", "ids": []string{"js-1", "js-2"}})
	answered := func(e event) bool { return e.Event == "answered" || e.Event == "reset" }
	if e := js.waitEvent(t, "A answered the js peer's batch", answered); e.Event != "answered" || len(e.Refused) > 0 {
		t.Fatalf("A's answer to the js peer's creates: %+v", e)
	}
	for _, id := range []string{"js-1", "js-2"} {
		ev := nextCreated(t, created)
		if ev.Origin != js.id.String() || ev.Resource.ID != id || ev.Resource.CreatorID != js.id.String() {
			t.Fatalf("event %+v; want %s created by the js peer %s", ev, id, js.id)
		}
	}

	// 3. A tampered signature on a new tree, then on a tree A applied: both
	// reset, nothing applied; then a good create goes through.
	js.command(t, map[string]any{"cmd": "send", "data_type": "vm", "ids": []string{"js-forged"}, "tamper": "signature"})
	if e := js.waitEvent(t, "A refused the tampered create", answered); e.Event != "reset" {
		t.Fatalf("A answered a create with a tampered signature: %+v", e)
	}
	js.command(t, map[string]any{"cmd": "resend_tampered"})
	if e := js.waitEvent(t, "A refused a known tree with a tampered signature", answered); e.Event != "reset" {
		t.Fatalf("A answered a batch it holds sent again with a tampered signature: %+v", e)
	}
	js.command(t, map[string]any{"cmd": "send", "data_type": "vm", "ids": []string{"js-3"}})
	if e := js.waitEvent(t, "A answered the good create after the forged ones", answered); e.Event != "answered" || len(e.Refused) > 0 {
		t.Fatalf("A's answer to a good create after the forged ones: %+v", e)
	}
	// Events come in A's commit order: had js-forged been applied, its
	// event would come before js-3's.
	if ev := nextCreated(t, created); ev.Resource.ID != "js-3" {
		t.Fatalf("after the forged create A published %+v; want js-3", ev)
	}
	if status, body, err := a.Get("/api/v1/resources?data_type=vm"); err != nil || status != 200 || strings.Contains(string(body), "js-forged") ||
		!strings.Contains(string(body), `"js-3"`) {
		t.Fatalf("A's resources (%d, %v): %s; want js-3 and no js-forged", status, err, body)
	}
	stderr := a.StderrAll()
	if !regexp.MustCompile(`level=WARN msg="stream reset".*bad envelope`).MatchString(stderr) {
		t.Fatalf("A did not log the forged batches' reset as a bad envelope:\n%s", a.Stderr())
	}
	if strings.Contains(stderr, "failed to identify peer") {
		t.Fatalf("A warns about a partner without identify:\n%s", a.Stderr())
	}

	// The partner given by `ferry partners add MULTIADDR` instead of the
	// config: kept across a restart, and dialed.
	a.Configure(func(c *node.Config) { c.Partners = nil })
	a.Restart()
	out, err := exec.Command(proc.Binary(t), "partners", "add", js.addr, "--home", a.Home().Dir).CombinedOutput()
	if err != nil {
		t.Fatalf("ferry partners add %s: %v\n%s", js.addr, err, out)
	}
	a.Restart()
	nc.Close()
	nc2, err := nats.Connect(a.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	propagate(t, nc2, "a-after-restart")
	js.waitEvent(t, "the js peer applied a create sent after A restarted with the partner added by the CLI", func(e event) bool {
		return e.Event == "received" && e.ID == "a-after-restart"
	})
	if n := js.count(func(e event) bool { return e.Event == "error" }); n > 0 {
		t.Fatalf("the js peer reported %d errors: %+v", n, js.all())
	}
}

// propagate creates resource id of data type vm on A and returns its version.
func propagate(t *testing.T, nc *nats.Conn, id string) uint64 {
	t.Helper()
	var r struct {
		OK      bool   `json:"ok"`
		Version uint64 `json:"version"`
		Error   any    `json:"error"`
	}
	request(t, nc, "ferry.propagate", map[string]any{"action": "create", "data_type": "vm", "payload": map[string]any{"id": id}}, &r)
	if !r.OK || r.Version == 0 {
		t.Fatalf("create %s: %+v", id, r)
	}
	return r.Version
}

func request(t *testing.T, nc *nats.Conn, subject string, body, into any) {
	t.Helper()
	b, _ := json.Marshal(body)
	m, err := nc.Request(subject, b, eventTimeout)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if err := json.Unmarshal(m.Data, into); err != nil {
		t.Fatalf("%s answered %s: %v", subject, m.Data, err)
	}
}

type createdEvent struct {
	Origin   string `json:"origin"`
	Version  uint64 `json:"version"`
	Resource struct {
		ID        string `json:"id"`
		CreatorID string `json:"creator_id"`
	} `json:"resource"`
}

func nextCreated(t *testing.T, sub *nats.Subscription) createdEvent {
	t.Helper()
	m, err := sub.NextMsg(eventTimeout)
	if err != nil {
		t.Fatalf("no ferry.resource.created.vm event: %v", err)
	}
	var ev createdEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatalf("event %s: %v", m.Data, err)
	}
	return ev
}

// metric reads one unlabelled sample of A's /metrics.
func metric(t *testing.T, a *proc.Node, name string) string {
	t.Helper()
	status, body, err := a.Get("/metrics")
	if err != nil || status != 200 {
		t.Fatalf("GET /metrics: %d %v", status, err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return ""
}

// jsPeer is the js-libp2p program, run as a child process.
type jsPeer struct {
	t    *testing.T
	dir  string
	key  crypto.PrivKey
	id   peer.ID
	port int
	addr string // its multiaddr with /p2p/<id>

	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // the stdout reader returned

	cursor int // events before it were matched by a wait (test goroutine only)

	mu     sync.Mutex
	events []event
	stderr strings.Builder
}

// event is one line the js peer printed.
type event struct {
	Event   string `json:"event"`
	ID      string `json:"id"`
	Version uint64 `json:"version,string"`
	Through uint64 `json:"through,string"`
	Refused []any  `json:"refused"`
	Error   string `json:"error"`
	Where   string `json:"where"`
}

// newJSPeer installs the js peer's packages (skipping where Node.js is
// missing) and makes its identity and port; start runs it.
func newJSPeer(t *testing.T) *jsPeer {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", filepath.Join(root, "scripts", "interop.sh")).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		t.Skipf("skipping the js-libp2p interop test: %s", strings.TrimSpace(string(out)))
	case err != nil:
		t.Fatalf("scripts/interop.sh: %v\n%s", err, out)
	}
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	port := proc.FreePort(t)
	return &jsPeer{t: t, dir: filepath.Join(root, "interop", "js"), key: key, id: id, port: port,
		addr: fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", port, id)}
}

// start runs the js peer, its partner the Ferry node at ferry, and waits
// until it listens.
func (j *jsPeer) start(ferry string) {
	t := j.t
	t.Helper()
	raw, err := crypto.MarshalPrivateKey(j.key)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]string{
		"key":    hex.EncodeToString(raw),
		"listen": fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", j.port),
		"ferry":  ferry,
		"proto":  filepath.Join(j.dir, "..", "..", "protocols", "pb", "ferry.proto"),
	})
	cmd := exec.Command("node", filepath.Join(j.dir, "peer.mjs"), string(cfg))
	cmd.Dir = j.dir
	cmd.Stderr = &lockedWriter{j}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if j.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the js peer: %v", err)
	}
	j.cmd, j.done = cmd, make(chan struct{})
	go j.read(stdout)
	t.Cleanup(j.stop)
	j.waitEventWithin(t, jsReady, "the js peer listens", func(e event) bool { return e.Event == "ready" })
}

// read is the one reader of the js peer's stdout; it returns when the
// process closes it (stop waits for it).
func (j *jsPeer) read(r io.Reader) {
	defer close(j.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			e = event{Event: "error", Error: "unreadable line: " + sc.Text()}
		}
		j.mu.Lock()
		j.events = append(j.events, e)
		j.mu.Unlock()
	}
}

// stop closes the js peer's stdin (it stops its node and exits), kills it
// if it has not exited within 10 s, and waits for its reader.
func (j *jsPeer) stop() {
	_ = j.stdin.Close()
	exited := make(chan error, 1)
	go func() { exited <- j.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = j.cmd.Process.Kill()
		<-exited
	}
	<-j.done
	if j.t.Failed() {
		j.mu.Lock()
		j.t.Logf("js peer events: %+v\njs peer stderr:\n%s", j.events, j.stderr.String())
		j.mu.Unlock()
	}
}

type lockedWriter struct{ j *jsPeer }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.j.mu.Lock()
	defer w.j.mu.Unlock()
	return w.j.stderr.Write(p)
}

func (j *jsPeer) command(t *testing.T, c map[string]any) {
	t.Helper()
	b, _ := json.Marshal(c)
	if _, err := j.stdin.Write(append(b, '\n')); err != nil {
		t.Fatalf("command the js peer: %v", err)
	}
}

func (j *jsPeer) all() []event {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]event(nil), j.events...)
}

func (j *jsPeer) count(match func(event) bool) int {
	n := 0
	for _, e := range j.all() {
		if match(e) {
			n++
		}
	}
	return n
}

// waitEvent waits until the js peer prints an event that matches, after
// the one the previous wait matched, and returns it.
func (j *jsPeer) waitEvent(t *testing.T, what string, match func(event) bool) event {
	t.Helper()
	return j.waitEventWithin(t, eventTimeout, what, match)
}

func (j *jsPeer) waitEventWithin(t *testing.T, timeout time.Duration, what string, match func(event) bool) event {
	t.Helper()
	var found event
	wait.Until(t, timeout, what, func() error {
		es := j.all()
		for i := j.cursor; i < len(es); i++ {
			if match(es[i]) {
				found, j.cursor = es[i], i+1
				return nil
			}
		}
		select {
		case <-j.done:
			return fmt.Errorf("the js peer exited: %s", j.stderrText())
		default:
		}
		return fmt.Errorf("js peer events since the last one waited for: %+v", es[j.cursor:])
	})
	return found
}

func (j *jsPeer) stderrText() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.stderr.String()
}
