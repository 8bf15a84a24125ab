package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nats-io/nats.go"

	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/internal/wording"
	"github.com/ferrynet/ferry/node"
)

// localFlags keep a test node on loopback, on ports the kernel picks.
var localFlags = []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--nats-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}

// ferry runs the CLI in-process and returns its output.
func ferry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func mustFerry(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ferry(t, args...)
	if err != nil {
		t.Fatalf("ferry %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func modeOf(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestInitCommand(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	out := mustFerry(t, "init", "--home", home, "--name", "X")
	id, err := peer.Decode(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("init printed %q, not a peer id: %v", out, err)
	}
	h := node.Home{Dir: home}
	for _, p := range []string{h.IdentityPath(), h.TokenPath()} {
		if m := modeOf(t, p); m != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, m)
		}
	}
	c, err := node.LoadFile(h.ConfigPath())
	if err != nil || c.Name != "X" {
		t.Fatalf("ferry.yaml: %v %+v", err, c)
	}
	if out2 := mustFerry(t, "init", "--home", home, "--name", "X"); strings.TrimSpace(out2) != id.String() {
		t.Fatalf("second init printed %q, want %s", out2, id)
	}
	// A bad name is refused, naming the key.
	if out, err := ferry(t, "init", "--home", t.TempDir(), "--name", "bad name"); err == nil || !strings.Contains(err.Error(), "config: name:") {
		t.Fatalf("init with a bad name: %v %s", err, out)
	}
}

type statusJSON struct {
	PeerID       string   `json:"peer_id"`
	Name         string   `json:"name"`
	NATS         string   `json:"nats"`
	NATSEmbedded bool     `json:"nats_embedded"`
	Admin        string   `json:"admin"`
	Addrs        []string `json:"addrs"`
}

func status(t *testing.T, home string) statusJSON {
	t.Helper()
	out := mustFerry(t, "--home", home, "status", "--json")
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json printed %q: %v", out, err)
	}
	return s
}

func adminAddr(home string) string {
	b, err := os.ReadFile(filepath.Join(home, node.AdminAddrFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRunInProcess runs `ferry run` on a goroutine and drives it with the
// operator commands, then stops it with SIGINT as Ctrl-C would.
func TestRunInProcess(t *testing.T) {
	home := t.TempDir()
	id := strings.TrimSpace(mustFerry(t, "init", "--home", home, "--name", "X"))

	// Hold SIGINT for the whole test, so a signal sent before `run` listens
	// for it cannot kill the test binary.
	guard := make(chan os.Signal, 16)
	signal.Notify(guard, os.Interrupt)
	defer signal.Stop(guard)

	root := newRoot()
	var runOut bytes.Buffer
	root.SetOut(&runOut)
	root.SetErr(&runOut)
	root.SetArgs(append([]string{"run", "--home", home, "--log-level", "error"}, localFlags...))
	done := make(chan error, 1)
	go func() { done <- root.Execute() }()
	stopped := false
	defer func() {
		if !stopped { // a failed test must not leave the node running
			stopRun(t, done)
		}
	}()

	testnet.WaitFor(t, 20*time.Second, "admin.addr is written", func() bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
		}
		return adminAddr(home) != ""
	})
	select {
	case err := <-done:
		stopped = true
		t.Fatalf("run ended early: %v\n%s", err, runOut.String())
	default:
	}
	addr := adminAddr(home)

	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != 200 || strings.Split(body, "\n")[0] != "ok" || !strings.Contains(body, "store: ok") {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 || strings.Split(body, "\n")[0] != "ok" || !strings.Contains(body, "nats: ok") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	if code, _ := httpGet(t, "http://"+addr+"/api/v1/status"); code != http.StatusUnauthorized {
		t.Fatalf("/api/v1/status without a token: %d, want 401", code)
	}
	if code, body := httpGet(t, "http://"+addr+"/metrics"); code != 200 || !strings.Contains(body, "ferry_") {
		t.Fatalf("/metrics: %d", code)
	}

	s := status(t, home)
	if s.PeerID != id || s.Name != "X" || s.Admin != addr || !s.NATSEmbedded || !strings.HasPrefix(s.NATS, "nats://127.0.0.1:") {
		t.Fatalf("status: %+v (peer %s, admin %s)", s, id, addr)
	}
	if len(s.Addrs) == 0 || !strings.HasPrefix(s.Addrs[0], "/ip4/127.0.0.1/tcp/") || !strings.HasSuffix(s.Addrs[0], "/p2p/"+id) {
		t.Fatalf("status addrs %v", s.Addrs)
	}
	if out := mustFerry(t, "--home", home, "status"); !strings.Contains(out, id) || !strings.Contains(out, "peer id") {
		t.Fatalf("status table:\n%s", out)
	}
	if out := mustFerry(t, "--home", home, "peers"); !strings.Contains(out, "NAME") || !strings.Contains(out, "PEER ID") {
		t.Fatalf("peers table:\n%s", out)
	}
	if out := strings.TrimSpace(mustFerry(t, "--home", home, "peers", "--json")); out != "[]" {
		t.Fatalf("peers --json of a lone node: %s", out)
	}

	stopped = true
	if err := stopRun(t, done); err != nil {
		t.Fatalf("run returned %v after SIGINT, want nil (exit 0)\n%s", err, runOut.String())
	}
	if adminAddr(home) != "" {
		t.Fatal("admin.addr is left behind after the node stopped")
	}
	if !strings.Contains(runOut.String(), "running: peer "+id) {
		t.Fatalf("run did not say it was running:\n%s", runOut.String())
	}
	// It says where its home is and how to open the console.
	abs, _ := filepath.Abs(home)
	for _, want := range []string{"home     " + abs, "export FERRY_HOME=" + abs, "console  http://" + addr + "/#token=", "metrics  http://" + addr + "/metrics"} {
		if !strings.Contains(runOut.String(), want) {
			t.Fatalf("run's first lines lack %q:\n%s", want, runOut.String())
		}
	}
	if _, err := ferry(t, "--home", home, "status"); err == nil || !strings.Contains(err.Error(), "node is not running") {
		t.Fatalf("status of a stopped node: %v", err)
	}
}

// stopRun sends SIGINT to this process once (run catches signals before
// its node writes admin.addr) and waits for the run command to return.
func stopRun(t *testing.T, done chan error) error {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		return err
	case <-time.After(40 * time.Second):
		t.Fatal("run did not return within 40s of SIGINT")
		return nil
	}
}

// buildFerry builds the ferry binary once per test.
func buildFerry(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=auto", "-o", bin, ".") // the revision stamp, whatever GOFLAGS says
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// result is a finished ferry process.
type result struct {
	code           int
	stdout, stderr string
}

// runBin runs the binary to its end, killed after timeout.
func runBin(t *testing.T, bin string, timeout time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ferry %s did not end within %v\nstderr: %s", strings.Join(args, " "), timeout, stderr.String())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("ferry %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// noPanic fails a test whose ferry process crashed instead of reporting.
func noPanic(t *testing.T, r result) {
	t.Helper()
	if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("ferry crashed (exit %d) instead of printing the error:\n%s", r.code, r.stderr)
	}
}

// checkWords fails the test when a message the user sees speaks Go (a Go
// type name, encoding/json's or yaml's phrasing) instead of their words.
func checkWords(t *testing.T, what, msg string) {
	t.Helper()
	if g := wording.GoInternals(msg); g != "" {
		t.Errorf("%s: %q speaks Go (%q)", what, msg, g)
	}
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestRunBinary runs the real binary: Ctrl-C exits 0 within 5 s, and each
// way `ferry run` can fail to start exits non-zero with a clear message.
func TestRunBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildFerry(t)
	initHome := func(t *testing.T) string {
		t.Helper()
		home := t.TempDir()
		r := runBin(t, bin, 20*time.Second, "init", "--home", home, "--name", "bin")
		if r.code != 0 {
			t.Fatalf("init exited %d: %s", r.code, r.stderr)
		}
		if _, err := peer.Decode(strings.TrimSpace(r.stdout)); err != nil {
			t.Fatalf("init printed %q", r.stdout)
		}
		return home
	}

	t.Run("ctrl-c exits 0", func(t *testing.T) {
		home := initHome(t)
		cmd := exec.Command(bin, append([]string{"run", "--home", home, "--log-level", "warn"}, localFlags...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		finished := false
		defer func() {
			if !finished {
				_ = cmd.Process.Kill()
				<-exited
			}
		}()
		testnet.WaitFor(t, 20*time.Second, "the node writes admin.addr", func() bool {
			select {
			case err := <-exited:
				finished = true
				t.Fatalf("ferry run exited early: %v\n%s", err, stderr.String())
			default:
			}
			return adminAddr(home) != ""
		})
		// An app can connect to the embedded NATS server and be answered.
		s := status(t, home)
		nc, err := nats.Connect(s.NATS, nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatalf("connect to the embedded NATS at %q: %v", s.NATS, err)
		}
		msg, err := nc.Request("ferry.changes", []byte(`{"since":0}`), 5*time.Second)
		nc.Close()
		if err != nil || !strings.Contains(string(msg.Data), `"ok":true`) {
			t.Fatalf("ferry.changes over NATS: %v", err)
		}

		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		select {
		case err := <-exited:
			finished = true
			if err != nil {
				t.Fatalf("ferry run exited with %v after SIGINT, want 0\nstderr: %s", err, stderr.String())
			}
			t.Logf("exited 0 %v after SIGINT", time.Since(start).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatalf("ferry run still running 5s after SIGINT\nstderr: %s", stderr.String())
		}
		if adminAddr(home) != "" {
			t.Fatal("admin.addr is left behind")
		}
	})

	t.Run("bad config names the key", func(t *testing.T) {
		home := initHome(t)
		r := runBin(t, bin, 20*time.Second, "run", "--home", home, "--listen", "/ip4/127.0.0.1/tcp/0",
			"--admin-listen", "127.0.0.1:0", "--nats-listen", "notaport")
		noPanic(t, r)
		if r.code == 0 {
			t.Fatalf("ferry run with a bad nats.listen exited 0")
		}
		msg := strings.TrimSpace(r.stderr)
		if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "ferry: ") || !strings.Contains(msg, "nats.listen") || !strings.Contains(msg, "notaport") {
			t.Fatalf("want one line naming nats.listen, got:\n%s", r.stderr)
		}
		// A bad value in ferry.yaml too.
		if err := os.WriteFile(filepath.Join(home, node.ConfigFile), []byte("limits:\n  max_message_bytes: 10\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r = runBin(t, bin, 20*time.Second, append([]string{"run", "--home", home}, localFlags...)...)
		msg = strings.TrimSpace(r.stderr)
		if r.code == 0 || strings.Contains(msg, "\n") || !strings.Contains(msg, "limits.max_message_bytes") {
			t.Fatalf("bad ferry.yaml: exit %d, stderr:\n%s", r.code, r.stderr)
		}
		checkWords(t, "bad ferry.yaml", msg)
		// A misspelt key and a value of the wrong type: the file and line,
		// the key as written, what it must be (never Go's type names).
		cfgPath := filepath.Join(home, node.ConfigFile)
		for _, tc := range []struct{ yaml, want string }{
			{"name: bin\nnetwrok: x\n", "ferry: " + cfgPath + ":2: unknown key `netwrok` (did you mean `network`?)"},
			{"name: bin\nnats:\n  prefx: x\n", "ferry: " + cfgPath + ":3: unknown key `nats.prefx` (did you mean `nats.prefix`?)"},
			{"name: bin\n\n\n\nlisten: 5\n", "ferry: " + cfgPath + ":5: `listen` must be a list of multiaddrs, got a number (5); a list of one is written [5]"},
		} {
			if err := os.WriteFile(cfgPath, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			r = runBin(t, bin, 20*time.Second, append([]string{"run", "--home", home}, localFlags...)...)
			noPanic(t, r)
			if msg := strings.TrimSpace(r.stderr); r.code != 1 || msg != tc.want {
				t.Errorf("ferry.yaml %q: exit %d, stderr:\n%s\nwant:\n%s", tc.yaml, r.code, r.stderr, tc.want)
			}
			checkWords(t, "ferry.yaml "+tc.yaml, r.stderr)
		}
		// A bad number in a flag names the flag.
		r = runBin(t, bin, 20*time.Second, "run", "--home", t.TempDir(), "--limits-max-message-bytes", "lots")
		if r.code == 0 || !strings.Contains(r.stderr, "limits-max-message-bytes") {
			t.Fatalf("bad flag: exit %d, stderr:\n%s", r.code, r.stderr)
		}
		checkWords(t, "bad flag", strings.SplitN(r.stderr, "\n", 2)[0]) // the usage after it lists flag types (int, strings)
		// A bad value in the environment names the variable.
		cmd := exec.Command(bin, append([]string{"run", "--home", t.TempDir()}, localFlags...)...)
		cmd.Env = append(os.Environ(), "FERRY_LIMITS_MAX_MESSAGE_BYTES=10")
		out, err := cmd.CombinedOutput()
		want := "ferry: FERRY_LIMITS_MAX_MESSAGE_BYTES: limits.max_message_bytes: 10 is outside 1024..67108864"
		if err == nil || strings.TrimSpace(string(out)) != want {
			t.Fatalf("bad env: %v, output:\n%s\nwant %s", err, out, want)
		}
	})

	t.Run("home in use says which process holds it", func(t *testing.T) {
		home := initHome(t)
		first := exec.Command(bin, append([]string{"run", "--home", home, "--log-level", "warn"}, localFlags...)...)
		var stderr bytes.Buffer
		first.Stderr = &stderr
		if err := first.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- first.Wait() }()
		defer func() {
			_ = first.Process.Kill()
			<-exited
		}()
		testnet.WaitFor(t, 20*time.Second, "the first node writes admin.addr", func() bool { return adminAddr(home) != "" })
		r := runBin(t, bin, 20*time.Second, append([]string{"run", "--home", home}, localFlags...)...)
		noPanic(t, r)
		abs, _ := filepath.Abs(home)
		want := fmt.Sprintf("ferry: home %s is in use by ferry run (pid %d, node bin, started ", abs, first.Process.Pid)
		msg := strings.TrimSpace(r.stderr)
		if r.code != 1 || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, want) || !strings.HasSuffix(msg, " UTC); stop it first or use another --home") {
			t.Fatalf("second run: exit %d, stderr:\n%s\nwant one line starting %q", r.code, r.stderr, want)
		}
		checkWords(t, "second run", msg)
		// A home whose data directory is the first's (linked, or copied
		// while both run) is told which process has the store open.
		other := t.TempDir()
		for _, f := range []string{node.IdentityFile, node.TokenFile} {
			b, err := os.ReadFile(filepath.Join(home, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(other, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(filepath.Join(home, node.DataDir), filepath.Join(other, node.DataDir)); err != nil {
			t.Fatal(err)
		}
		r = runBin(t, bin, 20*time.Second, append([]string{"run", "--home", other, "--log-level", "error"}, localFlags...)...)
		noPanic(t, r)
		want = fmt.Sprintf("ferry: open store %s: another process (pid %d) has it open; a data directory belongs to one node (is it shared with another home?)",
			filepath.Join(other, node.DataDir), first.Process.Pid)
		if last := lastLine(r.stderr); r.code != 1 || !strings.HasPrefix(last, want) {
			t.Fatalf("a run on a shared data directory: exit %d, stderr:\n%s\nwant a last line starting %q", r.code, r.stderr, want)
		}
		// SIGKILL leaves the record behind, but not the lock: the next run starts.
		_ = first.Process.Kill()
		<-exited
		exited <- nil
		second := exec.Command(bin, append([]string{"run", "--home", home, "--log-level", "warn"}, localFlags...)...)
		if err := second.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- second.Wait() }()
		defer func() {
			_ = second.Process.Kill()
			<-done
		}()
		testnet.WaitFor(t, 20*time.Second, "the run after the kill holds the home", func() bool {
			b, _ := os.ReadFile(filepath.Join(home, node.LockFile))
			return strings.Contains(string(b), fmt.Sprintf(`"pid":%d,`, second.Process.Pid))
		})
	})

	t.Run("world-readable identity key", func(t *testing.T) {
		home := initHome(t)
		if err := os.Chmod(filepath.Join(home, node.IdentityFile), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runBin(t, bin, 20*time.Second, append([]string{"run", "--home", home}, localFlags...)...)
		noPanic(t, r)
		if r.code == 0 || !strings.Contains(r.stderr, "chmod") {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
	})

	t.Run("nats port in use", func(t *testing.T) {
		home := initHome(t)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		busy := l.Addr().String()
		r := runBin(t, bin, 30*time.Second, "run", "--home", home, "--log-level", "error", "--listen", "/ip4/127.0.0.1/tcp/0",
			"--admin-listen", "127.0.0.1:0", "--nats-listen", busy)
		noPanic(t, r)
		last := lastLine(r.stderr)
		if r.code == 0 || !strings.HasPrefix(last, "ferry: ") || !strings.Contains(last, busy) || !strings.Contains(last, "in use") {
			t.Fatalf("exit %d, want a last line naming %s in use; stderr:\n%s", r.code, busy, r.stderr)
		}
	})

	t.Run("unreachable nats url", func(t *testing.T) {
		home := initHome(t)
		r := runBin(t, bin, 30*time.Second, append([]string{"run", "--home", home, "--log-level", "error",
			"--nats-url", "nats://127.0.0.1:1"}, localFlags...)...)
		noPanic(t, r)
		last := lastLine(r.stderr)
		if r.code == 0 || !strings.HasPrefix(last, "ferry: ") || !strings.Contains(last, "nats://127.0.0.1:1") {
			t.Fatalf("exit %d, want a last line naming nats://127.0.0.1:1; stderr:\n%s", r.code, r.stderr)
		}
	})
}

// TestStoppedNodeNeverReachesAnother: the CLI finds its node only through
// admin.addr, and refuses an answer from another node. Before, a home
// without admin.addr fell back to admin.listen (127.0.0.1:7480 by default)
// and showed whatever node listened there.
func TestStoppedNodeNeverReachesAnother(t *testing.T) {
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set(node.PeerHeader, "12D3KooWOtherNodeOtherNodeOtherNodeOtherNodeOther")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true,"status":{"name":"OTHER","peer_id":"other"}}`)
	}))
	defer other.Close()
	otherAddr := strings.TrimPrefix(other.URL, "http://")

	home := t.TempDir()
	mustFerry(t, "init", "--home", home, "--name", "X")
	// The home's admin.listen names the other node's address.
	cfg, err := node.LoadFile(filepath.Join(home, node.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Listen = otherAddr
	if err := cfg.Save(filepath.Join(home, node.ConfigFile)); err != nil {
		t.Fatal(err)
	}
	out, err := ferry(t, "--home", home, "status")
	if err == nil || !strings.Contains(err.Error(), "node is not running") || strings.Contains(out, "OTHER") {
		t.Fatalf("status of a stopped node with admin.listen on another node: %v\n%s", err, out)
	}

	// A stale admin.addr (a node killed with SIGKILL) now names the other node.
	if err := os.WriteFile(filepath.Join(home, node.AdminAddrFile), []byte(otherAddr+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = ferry(t, "--home", home, "status")
	if err == nil || !strings.Contains(err.Error(), "node is not running") || !strings.Contains(err.Error(), "another node") || strings.Contains(out, "OTHER") {
		t.Fatalf("status through a stale admin.addr that another node answers: %v\n%s", err, out)
	}

	// A stale admin.addr where nothing listens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	_ = l.Close()
	if err := os.WriteFile(filepath.Join(home, node.AdminAddrFile), []byte(dead+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ferry(t, "--home", home, "status"); err == nil || !strings.Contains(err.Error(), "node is not running") {
		t.Fatalf("status through a stale admin.addr: %v", err)
	}
}

// TestCLIPagesThroughListings: `ferry resources` and `ferry rows` print
// every row of listings longer than one page (1000 rows).
func TestCLIPagesThroughListings(t *testing.T) {
	net := testnet.Start(t, testnet.Options{N: 1})
	nc := net.NATS(0)
	const n = 1234
	sem := make(chan struct{}, 64)
	errs := make(chan error, n)
	for i := range n {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			m, err := nc.Request("ferry.propagate", []byte(fmt.Sprintf(`{"action":"create","data_type":"vm","payload":{"id":"vm-%d"}}`, i)), 30*time.Second)
			if err == nil && !strings.Contains(string(m.Data), `"ok":true`) {
				err = errors.New(string(m.Data))
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	rows := map[uint64]json.RawMessage{}
	for i := range 1500 {
		rows[uint64(i+1)] = json.RawMessage(fmt.Sprintf(`{"v":%d}`, i))
	}
	if err := net.Node(0).Review().Seed(context.Background(), "big", rows); err != nil {
		t.Fatal(err)
	}
	home := net.Homes[0].Dir
	var res []node.ResourceRow
	if err := json.Unmarshal([]byte(mustFerry(t, "--home", home, "resources", "--json")), &res); err != nil || len(res) != n {
		t.Fatalf("ferry resources --json: %d rows (%v), want %d", len(res), err, n)
	}
	var got []json.RawMessage
	if err := json.Unmarshal([]byte(mustFerry(t, "--home", home, "rows", "big", "--json")), &got); err != nil || len(got) != 1500 {
		t.Fatalf("ferry rows big --json: %d rows (%v), want 1500", len(got), err)
	}
}
