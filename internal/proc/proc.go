// Package proc runs real `ferry run` processes for crash and fault tests:
// tests that must SIGKILL a node, fill its disk, or stop it with SIGTERM
// under load, which an in-process node (internal/testnet) cannot show.
//
// Use:
//
//	func TestMain(m *testing.M) { os.Exit(proc.Main(m)) } // removes the built binary at the end
//
//	a := proc.Start(t, proc.Options{Name: "A"})
//	b := proc.New(t, proc.Options{Name: "B"})
//	proc.Partners(a, b)             // each lists the other in ferry.yaml
//	b.SetBootstrap(a)
//	b.Start()
//	nc, _ := nats.Connect(a.NATSURL())
//	a.Kill()                        // SIGKILL; the home stays
//	a.Restart()                     // same home, same ports
//	code := a.Term(10 * time.Second) // SIGTERM; the exit code, or the test fails after the bound
//
// What it does:
//   - Binary builds ./cmd/ferry once per test binary (go build into a temp
//     dir, cached with sync.Once; FERRY_PROC_RACE=1 builds with -race).
//   - New initialises a home (t.TempDir unless Options.Home names one) with
//     `ferry init`, and writes a ferry.yaml that uses only 127.0.0.1
//     (Options.Host: another address, e.g. in a network namespace run by
//     Options.Wrap) and free ports: libp2p TCP, embedded NATS and the admin API each get a port
//     that was free (a listen on it succeeded and was closed), pinned in
//     ferry.yaml so a restart reuses them. The ports are taken below the
//     kernel's ephemeral range (net.ipv4.ip_local_port_range): a port from
//     that range (what listening on :0 gives) is also handed to outgoing
//     connections, and an app reconnecting while its node is down can take
//     the node's pinned port before it restarts. It never uses the default
//     ports (4001, 4222, 7480). QUIC is off (one TCP address).
//   - Start runs `ferry run --home H` as a child with FERRY_* variables of
//     the test's environment removed, stderr captured to a file in the
//     test's temp dir (its tail is logged when the test fails), and waits
//     until the node is up: GET /healthz answers (200, or 503 with a reason:
//     a node on a full disk is up and says why it refuses writes) and the
//     NATS port accepts a connection. A node that exits while starting fails
//     the test with its stderr.
//   - Kill sends SIGKILL and waits for the process; Term sends SIGTERM and
//     returns the exit code, failing the test if the node is still running
//     after the bound. Restart starts a stopped node again (or kills a
//     running one first). Cleanup stops a running node (SIGTERM, then
//     SIGKILL after 15 s).
//   - Configure edits ferry.yaml (any key); SetPartners, SetMembers,
//     SetReviewer and SetBootstrap write the peer ids (and, for bootstrap,
//     the pinned address) of other nodes. Changes take effect at the next
//     Start or Restart.
//
// It must not be used by non-test code, and it never touches a default port.
package proc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/node"
)

// Timing bounds.
const (
	// ReadyTimeout bounds how long Start waits for a node to be ready.
	ReadyTimeout = 60 * time.Second
	// CleanupTerm bounds the SIGTERM at cleanup before SIGKILL.
	CleanupTerm = 15 * time.Second
)

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// Binary returns the path of ./cmd/ferry built for this test binary (once).
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			build.err = err
			return
		}
		dir, err := os.MkdirTemp("", "ferry-proc-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		bin := filepath.Join(dir, "ferry")
		args := []string{"build", "-o", bin}
		if os.Getenv("FERRY_PROC_RACE") == "1" {
			args = append(args, "-race")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/ferry")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/ferry: %w\n%s", err, out)
			return
		}
		build.bin = bin
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

// Main runs the tests and removes the built binary; use it in TestMain:
// os.Exit(proc.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	return code
}

// moduleRoot finds the directory of go.mod from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("proc: no go.mod above the working directory")
		}
		dir = parent
	}
}

// given are the ports FreePort handed out in this process: a port is free
// until the node it was given to binds it, so two nodes built one after the
// other could otherwise draw the same one (TestCorruptSST once gave A's
// admin port to B).
var given struct {
	sync.Mutex
	ports map[int]bool
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that it did not return before in this process, below the ephemeral range
// when it is known (see the package comment), never a default port of
// Ferry.
func FreePort(t testing.TB) int {
	t.Helper()
	lo := ephemeralLow()
	given.Lock()
	defer given.Unlock()
	if given.ports == nil {
		given.ports = map[int]bool{}
	}
	for range 1000 {
		port := 0
		if lo > 11000 {
			port = 10000 + rand.IntN(lo-11000)
		}
		switch port {
		case 4001, 4222, 7480:
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if p == 4001 || p == 4222 || p == 7480 || given.ports[p] {
			continue
		}
		given.ports[p] = true
		return p
	}
	t.Fatal("find a free port: none in 1000 tries")
	return 0
}

// ephemeralLow is the lowest port the kernel gives outgoing connections (0: unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return lo
}

// Options shape one node.
type Options struct {
	// Name is the node's name (default "node").
	Name string
	// Home is the home directory to use; empty: a fresh t.TempDir().
	Home string
	// Configure adjusts ferry.yaml before it is first written.
	Configure func(*node.Config)
	// Env adds variables to the child's environment (KEY=VALUE).
	Env []string
	// LogLevel of the child (default "info").
	LogLevel string
	// Host is the IPv4 address the node listens on (libp2p, NATS, admin)
	// and the test reaches it at; empty: 127.0.0.1. A node in a network
	// namespace of its own (faults/partition_test.go) listens on its
	// address there.
	Host string
	// Wrap runs the node under a command prefix, e.g. ["ip", "netns",
	// "exec", "ns1"] (the prefix must exec the node in its place: Kill and
	// Term signal the process it started).
	Wrap []string
}

// Node is one ferry process and its home.
type Node struct {
	t       testing.TB
	o       Options
	bin     string
	home    node.Home
	id      peer.ID
	token   string
	p2pPort int
	natsPrt int
	admPort int
	errPath string
	extURL  string // nats.url of ferry.yaml: the node uses an external server

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	code   int // exit code once exited (-1: killed by a signal)
	runs   int
}

// Start initialises a node and starts it.
func Start(t testing.TB, o Options) *Node {
	t.Helper()
	n := New(t, o)
	n.Start()
	return n
}

// New initialises a node's home and ferry.yaml without starting it.
func New(t testing.TB, o Options) *Node {
	t.Helper()
	if o.Name == "" {
		o.Name = "node"
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	bin := Binary(t)
	home := o.Home
	if home == "" {
		home = t.TempDir()
	}
	n := &Node{t: t, o: o, bin: bin, home: node.Home{Dir: home}, code: -1}
	out, err := exec.Command(bin, "init", "--home", home, "--name", o.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("ferry init --home %s: %v\n%s", home, err, out)
	}
	if n.id, err = peer.Decode(strings.TrimSpace(string(out))); err != nil {
		t.Fatalf("ferry init printed %q: %v", out, err)
	}
	if n.token, err = n.home.Token(); err != nil {
		t.Fatal(err)
	}
	n.p2pPort, n.natsPrt, n.admPort = FreePort(t), FreePort(t), FreePort(t)
	n.Configure(func(c *node.Config) {
		c.Name = o.Name
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/%d", o.Host, n.p2pPort)}
		c.NATS.URL = ""
		c.NATS.Listen = net.JoinHostPort(o.Host, strconv.Itoa(n.natsPrt))
		c.Admin.Listen = net.JoinHostPort(o.Host, strconv.Itoa(n.admPort))
		c.Log.Level = o.LogLevel
		if o.Configure != nil {
			o.Configure(c)
		}
	})
	n.errPath = filepath.Join(t.TempDir(), o.Name+".stderr")
	t.Cleanup(n.cleanup)
	return n
}

// Configure edits ferry.yaml; the change takes effect at the next start.
func (n *Node) Configure(fn func(*node.Config)) {
	n.t.Helper()
	c, err := node.LoadFile(n.home.ConfigPath())
	if err != nil {
		n.t.Fatal(err)
	}
	fn(&c)
	if err := c.Validate(); err != nil {
		n.t.Fatalf("node %s: %v", n.o.Name, err)
	}
	n.mu.Lock()
	n.extURL = c.NATS.URL
	n.mu.Unlock()
	if err := c.Save(n.home.ConfigPath()); err != nil {
		n.t.Fatal(err)
	}
}

func ids(ns []*Node) []string {
	out := make([]string, 0, len(ns))
	for _, x := range ns {
		out = append(out, x.id.String())
	}
	return out
}

// SetPartners writes partners: the given nodes' peer ids.
func (n *Node) SetPartners(ns ...*Node) { n.Configure(func(c *node.Config) { c.Partners = ids(ns) }) }

// SetMembers writes members: the given nodes' peer ids.
func (n *Node) SetMembers(ns ...*Node) { n.Configure(func(c *node.Config) { c.Members = ids(ns) }) }

// SetReviewer writes reviewer: r's peer id (nil: none).
func (n *Node) SetReviewer(r *Node) {
	n.Configure(func(c *node.Config) {
		c.Reviewer = ""
		if r != nil {
			c.Reviewer = r.id.String()
		}
	})
}

// SetBootstrap writes bootstrap: the given nodes' pinned addresses.
func (n *Node) SetBootstrap(ns ...*Node) {
	n.Configure(func(c *node.Config) {
		c.Bootstrap = nil
		for _, x := range ns {
			c.Bootstrap = append(c.Bootstrap, x.Multiaddr())
		}
	})
}

// Partners makes every given node a partner of every other, and gives each
// the first node as its bootstrap.
func Partners(ns ...*Node) {
	for i, a := range ns {
		var others []*Node
		for j, b := range ns {
			if i != j {
				others = append(others, b)
			}
		}
		a.SetPartners(others...)
		if i > 0 {
			a.SetBootstrap(ns[0])
		}
	}
}

// Start runs `ferry run` and waits until the node is ready.
func (n *Node) Start() {
	n.t.Helper()
	if err := n.StartErr(); err != nil {
		n.t.Fatal(err)
	}
}

// StartErr is Start that returns the failure instead of failing the test
// (a node that is expected not to start).
func (n *Node) StartErr() error {
	n.mu.Lock()
	if n.cmd != nil {
		select {
		case <-n.exited: // it ended by itself
			n.cmd = nil
		default:
			n.mu.Unlock()
			return fmt.Errorf("node %s is already running", n.o.Name)
		}
	}
	f, err := os.OpenFile(n.errPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	n.runs++
	fmt.Fprintf(f, "---- run %d at %s ----\n", n.runs, time.Now().Format(time.RFC3339Nano))
	argv := append(slices.Clone(n.o.Wrap), n.bin, "run", "--home", n.home.Dir)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(cleanEnv(), n.o.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group: a signal to the test's group never reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		n.mu.Unlock()
		return fmt.Errorf("start ferry run: %w", err)
	}
	exited := make(chan struct{})
	n.cmd, n.exited, n.code = cmd, exited, -1
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		_ = f.Close()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		n.mu.Lock()
		n.code = code
		n.mu.Unlock()
		close(exited)
	}()
	return n.waitReady(exited)
}

func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, node.EnvPrefix) {
			out = append(out, kv)
		}
	}
	return out
}

func (n *Node) waitReady(exited chan struct{}) error {
	deadline := time.Now().Add(ReadyTimeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-exited:
			n.reap()
			return fmt.Errorf("node %s exited with %d while starting:\n%s", n.o.Name, n.ExitCode(), n.Stderr())
		default:
		}
		if n.ready(hc) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not ready within %v:\n%s", n.o.Name, ReadyTimeout, n.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *Node) ready(hc *http.Client) bool {
	resp, err := hc.Get(n.AdminURL() + "/healthz")
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return false
	}
	n.mu.Lock()
	external := n.extURL != ""
	n.mu.Unlock()
	if external {
		return true // the node connected to it before its admin API started
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(n.o.Host, strconv.Itoa(n.natsPrt)), time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// reap forgets a process that has exited.
func (n *Node) reap() {
	n.mu.Lock()
	n.cmd = nil
	n.mu.Unlock()
}

// Running reports whether the process is running.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the current (or last) process ends.
func (n *Node) Exited() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exited == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return n.exited
}

// ExitCode is the last process's exit code (-1: killed by a signal, or running).
func (n *Node) ExitCode() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.code
}

// Pid is the running process's id (0 when stopped).
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to end.
func (n *Node) Kill() {
	n.t.Helper()
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		n.t.Fatalf("node %s did not die within 30s of SIGKILL", n.o.Name)
	}
	n.reap()
}

// Term sends SIGTERM and returns the exit code; the test fails if the node
// runs on after bound (it is then killed).
func (n *Node) Term(bound time.Duration) int {
	n.t.Helper()
	code, err := n.TermErr(bound)
	if err != nil {
		n.t.Fatal(err)
	}
	return code
}

// TermErr is Term that returns the failure to stop instead of failing the test.
func (n *Node) TermErr(bound time.Duration) (int, error) {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return n.ExitCode(), nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		n.reap()
		return n.ExitCode(), nil
	case <-time.After(bound):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		n.reap()
		return -1, fmt.Errorf("node %s still running %v after SIGTERM (killed):\n%s", n.o.Name, bound, n.Stderr())
	}
}

// Healthz returns GET /healthz's status and body (0 when nothing answers).
func (n *Node) Healthz() (int, string) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(n.AdminURL() + "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Wait waits for the process to end by itself and returns its exit code;
// the test fails after timeout.
func (n *Node) Wait(timeout time.Duration) int {
	n.t.Helper()
	select {
	case <-n.Exited():
		n.reap()
		return n.ExitCode()
	case <-time.After(timeout):
		n.t.Fatalf("node %s still running after %v", n.o.Name, timeout)
		return 0
	}
}

// Restart kills a running node (SIGKILL) and starts it again from its home.
func (n *Node) Restart() {
	n.t.Helper()
	n.Kill()
	n.Start()
}

func (n *Node) cleanup() {
	if n.Running() {
		if _, err := n.TermErr(CleanupTerm); err != nil {
			n.t.Logf("cleanup: %v", err)
		}
	}
	if n.t.Failed() {
		n.t.Logf("node %s stderr (last lines):\n%s", n.o.Name, n.Stderr())
	}
}

// Stderr is the tail (last 60 lines) of everything the node's runs wrote.
func (n *Node) Stderr() string {
	return tail(n.errPath, 60)
}

// StderrAll is everything the node's runs wrote to stderr.
func (n *Node) StderrAll() string {
	b, _ := os.ReadFile(n.errPath)
	return string(b)
}

func tail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var buf []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		buf = append(buf, sc.Text())
		if len(buf) > lines {
			buf = buf[1:]
		}
	}
	return strings.Join(buf, "\n")
}

// Name is the node's name.
func (n *Node) Name() string { return n.o.Name }

// NATSURL is where apps connect: the embedded server's pinned port, or
// nats.url when the node uses an external server.
func (n *Node) NATSURL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.extURL != "" {
		return n.extURL
	}
	return fmt.Sprintf("nats://%s:%d", n.o.Host, n.natsPrt)
}

// AdminURL is the admin API's base URL (no trailing slash).
func (n *Node) AdminURL() string { return fmt.Sprintf("http://%s:%d", n.o.Host, n.admPort) }

// Token is the admin API bearer token.
func (n *Node) Token() string { return n.token }

// PeerID is the node's peer id.
func (n *Node) PeerID() peer.ID { return n.id }

// Home is the node's home.
func (n *Node) Home() node.Home { return n.home }

// Multiaddr is the node's libp2p address with its peer id.
func (n *Node) Multiaddr() string {
	return "/ip4/" + n.o.Host + "/tcp/" + strconv.Itoa(n.p2pPort) + "/p2p/" + n.id.String()
}

// Get calls the admin API with the token and returns the status and body.
func (n *Node) Get(path string) (int, []byte, error) {
	return n.Do(http.MethodGet, path, nil, nil)
}

// PendingDecisionAck is the first of the node's acknowledgement rows of
// decisions still pending (GET /api/v1/acks?state=pending&kind=decision),
// as the API renders it; empty when every row is sended.
func (n *Node) PendingDecisionAck() (string, error) {
	code, body, err := n.Get("/api/v1/acks?state=pending&kind=decision&limit=1")
	if err != nil || code != http.StatusOK {
		return "", fmt.Errorf("acks at %s: %d %s %v", n.o.Name, code, body, err)
	}
	var page struct {
		Acks []json.RawMessage `json:"acks"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return "", fmt.Errorf("acks at %s: %w", n.o.Name, err)
	}
	if len(page.Acks) == 0 {
		return "", nil
	}
	return string(page.Acks[0]), nil
}

// Do calls the admin API with the token.
func (n *Node) Do(method, path string, body []byte, header http.Header) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, n.AdminURL()+path, rd)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+n.token)
	hc := &http.Client{Timeout: 30 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}
