package faults

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ferrynet/ferry/internal/proc"
	"github.com/ferrynet/ferry/internal/testnet"
	"github.com/ferrynet/ferry/node"
	"github.com/ferrynet/ferry/protocols"
)

// Stranger flood (issue 16, point 2): the size of the flood and what each
// stream claims.
const (
	floodHosts   = 100
	floodStreams = 8         // per host and protocol
	floodClaim   = 1_050_000 // the frame length each stream claims
	floodSent    = 32 << 10  // the bytes each stream sends of it
	floodMaxConn = 8         // connections.max of the node under test
	// floodRSSGrowth bounds the node's peak RSS above its RSS before the
	// flood.
	floodRSSGrowth = 100 << 20
)

// TestStrangerFlood: 100 libp2p hosts on 127.0.0.1, each with its own key
// and neither a partner nor a member of a `ferry run` node, each open 8
// streams of every protocol the node announces (its identify list, read
// from the peerstore after connecting), write uvarint(1050000) and 32 KiB
// on each and hold them. The node's peak RSS (VmHWM) stays within 100 MB of
// its RSS before the flood, its connections come down to connections.max
// (8 here), /healthz answers 200 and nothing was written (ferry.changes and
// the resources list are empty).
func TestStrangerFlood(t *testing.T) {
	a := proc.Start(t, proc.Options{Name: "A", Configure: func(c *node.Config) {
		c.Connections.Neighbours, c.Connections.Max = 2, floodMaxConn
	}})
	addr, err := ma.NewMultiaddr(strings.TrimSuffix(a.Multiaddr(), "/p2p/"+a.PeerID().String()))
	if err != nil {
		t.Fatal(err)
	}
	target := peer.AddrInfo{ID: a.PeerID(), Addrs: []ma.Multiaddr{addr}}

	hosts := make([]host.Host, floodHosts)
	for i := range hosts {
		// Its own key (libp2p's default identity), no listener, and no
		// resource limits of its own: a stranger holds what it likes.
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
			libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay())
		if err != nil {
			t.Fatal(err)
		}
		hosts[i] = h
		t.Cleanup(func() { _ = h.Close() })
	}

	// The protocols the node announces, from identify.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	if err := hosts[0].Connect(ctx, target); err != nil {
		t.Fatalf("connect to A: %v", err)
	}
	var protos []protocol.ID
	testnet.WaitFor(t, 10*time.Second, "identify lists A's protocols", func() bool {
		protos, _ = hosts[0].Peerstore().GetProtocols(a.PeerID())
		return slices.Contains(protos, protocols.Hello)
	})
	slices.Sort(protos)
	t.Logf("A announces %d protocols: %v", len(protos), protos)

	base := procStatus(t, a.Pid(), "VmRSS")
	frame := binary.AppendUvarint(nil, floodClaim)
	frame = append(frame, make([]byte, floodSent)...)
	var (
		opened, refused atomic.Int64
		mu              sync.Mutex
		held            []network.Stream
		wg              sync.WaitGroup
	)
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Connect(ctx, target); err != nil {
				refused.Add(int64(len(protos) * floodStreams))
				return
			}
			// Streams go over the connection made; a stranger whose
			// connection was closed does not dial again.
			sctx := network.WithNoDial(ctx, "flood")
			for _, p := range protos {
				for range floodStreams {
					s, err := h.NewStream(sctx, a.PeerID(), p)
					if err != nil {
						refused.Add(1)
						continue
					}
					_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
					if _, err := s.Write(frame); err != nil {
						refused.Add(1)
						_ = s.Reset()
						continue
					}
					opened.Add(1)
					mu.Lock()
					held = append(held, s)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("flood: %d hosts x %d protocols x %d streams: %d opened and written, %d refused",
		floodHosts, len(protos), floodStreams, opened.Load(), refused.Load())

	// While the strangers hold their streams: the node's memory stays
	// bounded, it comes down to connections.max and stays healthy.
	checkRSS := func(when string) bool {
		peak := procStatus(t, a.Pid(), "VmHWM")
		t.Logf("A %s: RSS %d MB before the flood, peak %d MB (growth %d MB); %d connections (max %d); %d of their streams on connections still open",
			when, base>>20, peak>>20, (peak-base)>>20, metric(t, a, "ferry_connections"), floodMaxConn, stillHeld(&mu, held))
		if peak-base > floodRSSGrowth {
			t.Errorf("A's peak RSS grew by %d MB under the flood (%s), want at most %d MB", (peak-base)>>20, when, floodRSSGrowth>>20)
			return false
		}
		return true
	}
	grew := !checkRSS("as the flood ends")
	testnet.WaitFor(t, 30*time.Second, "A's connections come down to connections.max", func() bool {
		return metric(t, a, "ferry_connections") <= floodMaxConn
	})
	if code, body := a.Healthz(); code != 200 {
		t.Fatalf("A's /healthz during the flood: %d %s", code, body)
	}
	if !grew {
		checkRSS("at connections.max")
	}
	if closed := metric(t, a, "ferry_strangers_closed_total"); closed == 0 {
		t.Errorf("A closed no stranger's connection")
	}

	// Nothing was written.
	nc := connect(t, a.NATSURL())
	m, err := nc.Request("ferry.changes", []byte(`{}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		OK      bool              `json:"ok"`
		Changes []json.RawMessage `json:"changes"`
	}
	if err := json.Unmarshal(m.Data, &page); err != nil || !page.OK {
		t.Fatalf("ferry.changes: %v %s", err, m.Data)
	}
	if len(page.Changes) != 0 {
		t.Fatalf("A holds %d changes after the flood, want none", len(page.Changes))
	}
	if rs := resources(t, a); len(rs) != 0 {
		t.Fatalf("A holds %d resources after the flood, want none", len(rs))
	}
	if code, body := a.Healthz(); code != 200 {
		t.Fatalf("A's /healthz after the flood: %d %s", code, body)
	}
}

// stillHeld counts the flood's streams whose connection is still open
// (the node may have reset the streams themselves).
func stillHeld(mu *sync.Mutex, held []network.Stream) int {
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, s := range held {
		if !s.Conn().IsClosed() {
			n++
		}
	}
	return n
}

// procStatus reads a memory line of /proc/<pid>/status (VmRSS, VmHWM), in
// bytes.
func procStatus(t *testing.T, pid int, key string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", key, v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

// metric reads an unlabelled metric of a node's /metrics (0 when absent).
func metric(t *testing.T, n *proc.Node, name string) int {
	t.Helper()
	code, b, err := n.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %q", name, line)
			}
			return int(f)
		}
	}
	return 0
}
