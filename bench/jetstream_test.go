package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrynet/ferry/internal/testnet"
)

const (
	jsDomainA = "site_a"
	jsDomainB = "site_b"
)

// freePort asks the kernel for a free TCP port on loopback.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runJS starts an embedded nats-server with JetStream (file storage) in its
// own domain, shut down at cleanup.
func runJS(t testing.TB, name, domain string, syncAlways bool, configure func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{
		ServerName:      name,
		Host:            "127.0.0.1",
		Port:            server.RANDOM_PORT,
		NoSigs:          true,
		NoLog:           true,
		JetStream:       true,
		JetStreamDomain: domain,
		StoreDir:        t.TempDir(),
		SyncAlways:      syncAlways,
		MaxPending:      256 << 20,
	}
	if configure != nil {
		configure(o)
	}
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatalf("nats-server %s did not start", name)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

type jsResult struct {
	SyncAlways bool
	N          int
	CPU        time.Duration // this process's CPU during the run (server and app), where measured
	Elapsed    time.Duration // first publish to DST holding every message
	AckedAt    time.Duration // first publish to the last PubAck from SRC
	Check      string
	Failed     bool
}

func (r jsResult) MsgsPerSec() float64 { return float64(r.N) / r.Elapsed.Seconds() }

// jetstreamSourcing is the baseline a user would pick instead of Ferry:
// server A (domain site_a) holds stream SRC; server B (domain site_b),
// connected to A as a leafnode, holds DST which sources SRC through A's
// domain API ($JS.site_a.API). The app publishes n 256-byte messages to A
// with async publish and at most inflight unacknowledged; the clock stops
// when DST holds all of them.
func jetstreamSourcing(t testing.TB, n, inflight int, syncAlways bool, wait time.Duration) jsResult {
	t.Helper()
	leafPort := freePort(t)
	sa := runJS(t, "site-a", jsDomainA, syncAlways, func(o *server.Options) {
		o.LeafNode.Host = "127.0.0.1"
		o.LeafNode.Port = leafPort
	})
	u, _ := url.Parse("nats-leaf://127.0.0.1:" + strconv.Itoa(leafPort))
	sb := runJS(t, "site-b", jsDomainB, syncAlways, func(o *server.Options) {
		o.LeafNode.Remotes = []*server.RemoteLeafOpts{{URLs: []*url.URL{u}}}
		o.LeafNode.ReconnectInterval = 100 * time.Millisecond
	})
	testnet.WaitFor(t, 20*time.Second, "leafnode B->A connects", func() bool { return sa.NumLeafNodes() == 1 && sb.NumLeafNodes() == 1 })

	var acked, pubErrs atomic.Int64
	var firstErr atomic.Value
	// The app's own window: PublishAsync errors out (rather than waits)
	// when its pending limit stalls for long, so the limit is set above it.
	sem := make(chan struct{}, inflight)
	ncA, err := nats.Connect(sa.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	jsA, err := jetstream.New(ncA,
		jetstream.WithPublishAsyncMaxPending(inflight+16),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) {
			if m.Subject == "bench.m" {
				acked.Add(1)
				<-sem
			}
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			pubErrs.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
			if m.Subject == "bench.m" {
				<-sem
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	ncB, err := nats.Connect(sb.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncB.Close)
	jsB, err := jetstream.New(ncB)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := jsA.CreateStream(ctx, jetstream.StreamConfig{Name: "SRC", Subjects: []string{"bench.>"},
		Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("create SRC: %v", err)
	}
	dst, err := jsB.CreateStream(ctx, jetstream.StreamConfig{Name: "DST", Storage: jetstream.FileStorage,
		Sources: []*jetstream.StreamSource{{Name: "SRC",
			External: &jetstream.ExternalStream{APIPrefix: "$JS." + jsDomainA + ".API"}}}})
	if err != nil {
		t.Fatalf("create DST: %v", err)
	}
	msgs := func() uint64 {
		si, err := dst.Info(ctx)
		if err != nil {
			t.Fatalf("DST info: %v", err)
		}
		return si.State.Msgs
	}
	// Warm up: one message through SRC into DST.
	if _, err := jsA.Publish(ctx, "bench.warm", make([]byte, payloadBytes)); err != nil {
		t.Fatalf("warm-up publish: %v", err)
	}
	by, _ := ctx.Deadline()
	testnet.WaitFor(t, time.Until(by), "the warm-up message reaches DST", func() bool { return msgs() == 1 })
	acked.Store(0)
	pubErrs.Store(0)

	runtime.GC()
	payload := make([]byte, payloadBytes)
	for i := range payload {
		payload[i] = 'x'
	}
	start := now()
	var ackedAt time.Duration
	for i := range n {
		sem <- struct{}{}
		binary.BigEndian.PutUint64(payload, uint64(i))
		if _, err := jsA.PublishAsync("bench.m", payload); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	want := uint64(n) + 1
	for {
		if ackedAt == 0 && acked.Load()+pubErrs.Load() == int64(n) {
			ackedAt = now() - start
		}
		if msgs() >= want {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("timed out: DST holds %d of %d", msgs()-1, n)
		}
		// A fixed 2 ms look, not wait.For's growing pause: the end of this
		// loop is the measured time.
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := now() - start
	select {
	case <-jsA.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publish acks never completed")
	}
	if ackedAt == 0 {
		ackedAt = now() - start
	}
	time.Sleep(wait) // a window for late duplicates to show: time passing is the point
	got := msgs() - 1
	si, err := jsA.Stream(ctx, "SRC")
	if err != nil {
		t.Fatal(err)
	}
	info, err := si.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := jsResult{SyncAlways: syncAlways, N: n, Elapsed: elapsed, AckedAt: ackedAt}
	r.Check = fmt.Sprintf("acks %d/%d ok; SRC %d, DST %d", acked.Load(), n, info.State.Msgs-1, got)
	if pubErrs.Load() != 0 {
		r.Check += fmt.Sprintf("; %d publish errors, first: %v", pubErrs.Load(), firstErr.Load())
	}
	r.Failed = acked.Load() != int64(n) || pubErrs.Load() != 0 || got != uint64(n) || info.State.Msgs-1 != uint64(n)
	if r.Failed {
		t.Errorf("jetstream checks failed: %s", r.Check)
	}
	return r
}

// jetstreamAsync is the other baseline: one nats-server with JetStream,
// one file-backed stream, the app publishing n 256-byte messages with
// async publish and at most inflight unacknowledged; the clock stops at the
// last PubAck. It is what an app gets from JetStream on one site, with no
// second site and its default sync (no fsync before the ack).
func jetstreamAsync(t testing.TB, n, inflight int) jsResult {
	t.Helper()
	s := runJS(t, "single", "single", false, nil)
	var acked, pubErrs atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, inflight)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	done := make(chan struct{})
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(inflight+16),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) {
			if m.Subject == "bench.m" {
				if acked.Add(1)+pubErrs.Load() == int64(n) {
					close(done)
				}
				<-sem
			}
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			firstErr.CompareAndSwap(nil, err.Error())
			if m.Subject == "bench.m" {
				if pubErrs.Add(1)+acked.Load() == int64(n) {
					close(done)
				}
				<-sem
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "bench.warm", make([]byte, payloadBytes)); err != nil {
		t.Fatalf("warm-up publish: %v", err)
	}
	runtime.GC()
	payload := make([]byte, payloadBytes)
	for i := range payload {
		payload[i] = 'x'
	}
	cpu0 := selfCPU()
	start := now()
	for i := range n {
		sem <- struct{}{}
		binary.BigEndian.PutUint64(payload, uint64(i))
		if _, err := js.PublishAsync("bench.m", payload); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("timed out: %d of %d acked", acked.Load(), n)
	}
	elapsed := now() - start
	cpu := selfCPU() - cpu0
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := jsResult{N: n, Elapsed: elapsed, AckedAt: elapsed, CPU: cpu}
	r.Check = fmt.Sprintf("acks %d/%d ok; stream holds %d", acked.Load(), n, info.State.Msgs-1)
	if pubErrs.Load() != 0 {
		r.Check += fmt.Sprintf("; %d publish errors, first: %v", pubErrs.Load(), firstErr.Load())
	}
	r.Failed = acked.Load() != int64(n) || pubErrs.Load() != 0 || info.State.Msgs-1 != uint64(n)
	if r.Failed {
		t.Errorf("jetstream checks failed: %s", r.Check)
	}
	return r
}
