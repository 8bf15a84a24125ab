package eventstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrynet/ferry/eventstream"
	"github.com/ferrynet/ferry/internal/wait"
	"github.com/ferrynet/ferry/natsbridge"
)

// TestInsufficientResourcesHoldsTheCursor: JetStream refuses to store (the
// server's store is full: another stream took it). Nothing is lost and
// nothing hangs: the cursor stays, Health says why, and once space is
// freed every event is stored, once, in order.
func TestInsufficientResourcesHoldsTheCursor(t *testing.T) {
	// A server that may store 3 MiB in all.
	r := newRigWith(t, func(o *server.Options) { o.JetStreamMaxStore = 3 << 20 })
	o := r.options()
	o.MaxBytes, o.StuckAfter = 1<<20, 500*time.Millisecond
	p := r.publisher(o)
	defer p.Close()
	first := r.write(10, all)
	waitStored(t, r, p)

	// An app's stream fills the rest of the server's store.
	ctx := context.Background()
	fill, err := r.js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILL", Subjects: []string{"fill"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<10)
	for i := 0; ; i++ {
		if _, err := r.js.Publish(ctx, "fill", big); err != nil {
			if !strings.Contains(err.Error(), "insufficient resources") {
				t.Fatalf("filling: %v", err)
			}
			break
		}
		if i > 1000 {
			t.Fatal("the server's store did not fill")
		}
	}
	held := p.Health().Through
	later := r.write(10, all)
	wait.Until(t, 20*time.Second, "Health says the stream cannot store", func() error {
		if h := p.Health(); h.OK || !strings.Contains(h.Reason, "insufficient") {
			return fmt.Errorf("%+v", h)
		}
		return nil
	})
	if h := p.Health(); h.Through != held || h.CaughtUp {
		t.Fatalf("the cursor moved while JetStream refused: %+v (held at %d)", h, held)
	}

	if err := fill.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	waitStored(t, r, p)
	checkOnce(t, r.stored(), append(first, later...))
	if h := p.Health(); !h.OK {
		t.Fatalf("health after space returned: %+v", h)
	}
}

// TestWriteErrorRestartsJetStream: the disk under the embedded JetStream
// fills while events are on their way (ENOSPC in its file store, which then
// answers nothing, for good, until it is reopened). The cursor stays;
// nothing is sent while the disk is below the reserve; once space is freed
// the publisher restarts the embedded JetStream and stores every event,
// once, in order. It needs a small file system (root).
func TestWriteErrorRestartsJetStream(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts a small tmpfs: needs root (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "js")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s", dir, err, out)
		}
	})
	r := newRig(t) // the store stays on the ordinary disk
	b, err := natsbridge.Start(natsbridge.Options{Listen: "127.0.0.1:0", JetStreamDir: dir, Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	conn, err := b.Connect("events")
	if err != nil {
		t.Fatal(err)
	}
	o := r.options()
	o.MaxBytes, o.StoreLimit, o.DiskDir, o.MinFreeBytes = 8<<20, b.JetStreamMaxStore(), dir, 1<<20
	o.AckTimeout, o.RestartEvery, o.StuckAfter = time.Second, time.Second, 500*time.Millisecond
	o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	p, err := eventstream.New(eventstream.Deps{Store: r.st, Conn: conn, Kinds: kinds, Self: r.self, Restart: b.RestartJetStream}, o)
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	first := r.write(10, all)
	waitStored(t, r, p)

	// Leave 1.5 MiB free, above the reserve, and send 4 MiB of events.
	filler := filepath.Join(dir, "filler")
	free := func() uint64 {
		u, err := vfs.Default.GetDiskUsage(dir)
		if err != nil {
			t.Fatal(err)
		}
		return u.AvailBytes
	}
	if err := os.WriteFile(filler, make([]byte, free()-(3<<19)), 0o600); err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 4<<10)
	later := r.writePayloads(1000, func(i int) string { return fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad) })
	wait.Until(t, 30*time.Second, "Health says the disk is low", func() error {
		if h := p.Health(); h.OK || !strings.Contains(h.Reason, "disk almost full") {
			return fmt.Errorf("%+v", h)
		}
		return nil
	})
	if h := p.Health(); h.CaughtUp {
		t.Fatalf("caught up on a full disk: %+v", h)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 60*time.Second, "every event stored after space returned", func() error {
		if h := p.Health(); !h.CaughtUp || !h.OK {
			return fmt.Errorf("%+v", h)
		}
		return nil
	})
	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r.js, _ = jetstream.New(nc)
	checkOnce(t, r.stored(), append(first, later...))
}

// testWriter logs through t.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// TestKeepsLimitsJetStreamWillNotChange: on a fuller disk JetStream refuses
// every change of a stream's limits (it checks them against what it may
// store now); the node still starts, with the stream as it is.
func TestKeepsLimitsJetStreamWillNotChange(t *testing.T) {
	maxStore := int64(8 << 20)
	r := newRigWith(t, func(o *server.Options) { o.JetStreamMaxStore = maxStore })
	o := r.options()
	o.MaxBytes = 4 << 20
	p := r.publisher(o)
	first := r.write(5, all)
	waitStored(t, r, p)
	p.Close()

	// The server comes back allowed less than the stream holds in reserve.
	r.srv.Shutdown()
	r.srv.WaitForShutdown()
	r.nc.Close()
	maxStore = 2 << 20
	r.startServer()
	o.MaxBytes = 6 << 20
	logged := &syncBuffer{}
	o.Logger = slog.New(slog.NewTextHandler(logged, nil))
	p = r.publisher(o)
	defer p.Close()
	later := r.write(5, all)
	waitStored(t, r, p)
	checkOnce(t, r.stored(), append(first, later...))
	st, err := r.js.Stream(context.Background(), "FERRY_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	if mb := st.CachedInfo().Config.MaxBytes; mb != 4<<20 || !strings.Contains(logged.String(), "it keeps them") {
		t.Fatalf("the stream's max bytes: %d, want the 4 MiB it kept, and a WARN saying so:\n%s", mb, logged.String())
	}
}

// syncBuffer is a log the test reads while the publisher writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNoJetStreamIsAClearError: a server without JetStream (an external one
// the operator opted in without enabling it) stops the start with a line
// that says so.
func TestNoJetStreamIsAClearError(t *testing.T) {
	r := newRigWith(t, func(o *server.Options) { o.JetStream = false })
	o := r.options()
	_, err := r.newPublisher(o)
	if err == nil || !strings.Contains(err.Error(), "JetStream is not enabled") || !strings.Contains(err.Error(), "nats.events.enabled") {
		t.Fatalf("a server without JetStream: %v", err)
	}
	if testing.Verbose() {
		t.Log(err)
	}
}
