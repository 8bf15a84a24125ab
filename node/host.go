package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrynet/ferry/peers"
	"github.com/ferrynet/ferry/protocols"
)

// connGrace keeps a new connection from the connection manager's trimming
// (its watermarks come from connections.max, see connLimits). Partners, the
// reviewer and the chosen neighbours are protected.
const connGrace = time.Minute

// muxer is yamux as go-libp2p configures it, with keep-alives every
// keepAlive instead of every 30 s, and the round trip (which sizes a
// stream's receive window) measured at the connection's start and every
// rttEvery instead of every 30 s. Each is a ping frame on every connection
// from both ends, answered by the other: at 20 connections, 160 frames a
// minute each way at rest with go-libp2p's 30 s, 48 with these. A TCP connection also has the
// kernel's keep-alive (go-libp2p sets it to 30 s); yamux's finds a peer
// that stopped answering within keepAlive plus its 10 s write timeout.
func muxer() *yamux.Transport {
	t := *yamux.DefaultTransport
	t.KeepAliveInterval = keepAlive
	t.MeasureRTTInterval = rttEvery
	return &t
}

const (
	keepAlive = time.Minute
	rttEvery  = 5 * time.Minute
)

// connLimits are the connection manager's watermarks for a config: trimming
// starts above max and goes down to three quarters of it.
func connLimits(c Config) (low, high int) {
	high = c.Connections.Max
	low = max(high*3/4, c.Connections.Neighbours+1)
	return low, high
}

// dhtOptions are the DHT's options on a built or a prebuilt host.
// Kademlia's own refresh is off: discovery refreshes the routing table
// (peers/discovery.go, dhtRefresh).
func dhtOptions(c Config) []dht.Option {
	var boot []peer.AddrInfo
	for _, b := range c.Bootstrap {
		if ai, err := peer.AddrInfoFromString(b); err == nil {
			boot = append(boot, *ai)
		}
	}
	return []dht.Option{
		dht.ProtocolPrefix(protocols.DHTPrefix),
		dht.Mode(dht.ModeServer),
		dht.BootstrapPeers(boot...),
		dht.DisableAutoRefresh(),
	}
}

// peerMemoryBase is what one peer may hold in this node's memory besides
// its frames: the windows of its streams (256 KiB each to start) and the
// handlers' reservations.
const peerMemoryBase = 64 << 20

// systemMemoryBase and systemMemoryPerConn size the memory all peers
// together may hold: a base, and per connection of connections.max the
// windows of some sixteen streams (256 KiB each to start).
const (
	systemMemoryBase    = 256 << 20
	systemMemoryPerConn = 4 << 20
)

// resourceLimits are the resource manager's limits: libp2p's defaults
// scaled to the machine, with the memory of one stream, one peer and one
// peer's use of a service bounded by what Ferry's frames need, and the
// memory of all peers together by connections.max (never more than
// libp2p's eighth of the machine's memory). A stream's frame buffer is
// reserved in its scope as it grows (protocols.FrameReader), so a peer
// holds at most peerMemoryBase plus a frame on each delivery protocol and
// two more (sync, search), whatever it claims to send.
func resourceLimits(c Config) rcmgr.ConcreteLimitConfig {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	scaled := limits.AutoScale()
	frame := int64(c.Limits.MaxMessageBytes + protocols.FrameOverhead)
	stream := max(16<<20, frame+(1<<20))
	peer := peerMemoryBase + int64(len(protocols.DeliveryProtocols)+2)*frame
	system := systemMemoryBase + int64(c.Connections.Max)*systemMemoryPerConn + 4*peer
	if auto := int64(scaled.ToPartialLimitConfig().System.Memory); auto > 0 {
		system = min(system, auto)
	}
	partial := rcmgr.PartialLimitConfig{
		System:              rcmgr.ResourceLimits{Memory: rcmgr.LimitVal64(system)},
		PeerDefault:         rcmgr.ResourceLimits{Memory: rcmgr.LimitVal64(peer)},
		ServicePeerDefault:  rcmgr.ResourceLimits{Memory: rcmgr.LimitVal64(peer)},
		ProtocolPeerDefault: rcmgr.ResourceLimits{Memory: rcmgr.LimitVal64(2 * stream)},
		Stream:              rcmgr.ResourceLimits{Memory: rcmgr.LimitVal64(stream)},
	}
	return partial.Build(scaled)
}

// preflight binds each fixed listen port once and lets it go, so a port in
// use is reported before libp2p starts: go-libp2p leaves goroutines behind
// when its own listen fails.
func preflight(listen []string) error {
	for _, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("config: listen: %q: %w", s, err)
		}
		network, addr, err := manet.DialArgs(a)
		if err != nil {
			continue // not an IP address we can check
		}
		if strings.HasSuffix(addr, ":0") {
			continue
		}
		switch {
		case strings.HasPrefix(network, "tcp"):
			l, err := net.Listen(network, addr)
			if err != nil {
				return fmt.Errorf("listen %s: %w", s, err)
			}
			_ = l.Close()
		case strings.HasPrefix(network, "udp"):
			c, err := net.ListenPacket(network, addr)
			if err != nil {
				return fmt.Errorf("listen %s: %w", s, err)
			}
			_ = c.Close()
		}
	}
	return nil
}

// buildHost creates the libp2p host and its DHT, with gater (the peer book,
// and the bound of connections.max once the keeper is set) as its
// connection gater and every stream handler set on it behind the gate. The
// host is routed: a stream to a peer whose addresses are unknown looks them
// up in the DHT.
func buildHost(ctx context.Context, c Config, key crypto.PrivKey, gater *peers.ConnGater, reg prometheus.Registerer,
	gate *peers.Gate) (host.Host, *dht.IpfsDHT, error) {
	var psk pnet.PSK
	if c.PrivateNetworkKey != "" {
		f, err := os.Open(c.PrivateNetworkKey)
		if err != nil {
			return nil, nil, fmt.Errorf("config: private_network_key: %w", err)
		}
		psk, err = pnet.DecodeV1PSK(f)
		_ = f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("config: private_network_key: %w", err)
		}
	}
	listen := c.Listen
	if psk != nil {
		// QUIC cannot carry a pre-shared key: a private network is TCP only.
		listen = nil
		for _, a := range c.Listen {
			if !strings.Contains(a, "/quic") {
				listen = append(listen, a)
			}
		}
		if len(listen) == 0 {
			return nil, nil, fmt.Errorf("config: listen: a private network needs a TCP address (QUIC cannot use private_network_key)")
		}
	}
	if err := preflight(listen); err != nil {
		return nil, nil, err
	}
	str, err := rcmgr.NewStatsTraceReporter()
	if err != nil {
		return nil, nil, fmt.Errorf("resource manager metrics: %w", err)
	}
	rcmgr.MustRegisterWith(reg)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(resourceLimits(c)), rcmgr.WithTraceReporter(str))
	if err != nil {
		return nil, nil, fmt.Errorf("resource manager: %w", err)
	}
	low, high := connLimits(c)
	cm, err := connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(connGrace))
	if err != nil {
		return nil, nil, fmt.Errorf("connection manager: %w", err)
	}
	var kad *dht.IpfsDHT
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(listen...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(tls.ID, tls.New),
		// No SO_REUSEPORT: a second node on the same port must fail to start.
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		libp2p.Muxer(yamux.ID, muxer()),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.ConnectionGater(gater),
		libp2p.PrometheusRegisterer(reg),
		libp2p.DisableRelay(),
		libp2p.UserAgent("ferry/" + Version),
		libp2p.Routing(func(h host.Host) (routing.PeerRouting, error) {
			d, err := dht.New(ctx, peers.BoundDials(gate.Admitted(h), gate, c.Connections.Max), dhtOptions(c)...)
			kad = d
			return d, err
		}),
	}
	if psk != nil {
		opts = append(opts, libp2p.PrivateNetwork(psk))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		_ = rm.Close()
		_ = cm.Close()
		// A port in use is found by preflight, with the system's error
		// (errors.Is(err, syscall.EADDRINUSE)); go-libp2p reports its own
		// listen failures as text only, so nothing here matches on them.
		return nil, nil, fmt.Errorf("libp2p host on %s: %w", strings.Join(listen, ", "), err)
	}
	// The gater refuses a blocked peer's new connections, but one that
	// passed it just before the block (CutLink) is added to the swarm
	// after CutLink closed the peer's connections: the network's report
	// of each new connection closes it then.
	gate.DropRefused(h)
	return gate.Admitted(h), kad, nil
}
