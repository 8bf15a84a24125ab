package node

import (
	"testing"

	"github.com/ferrynet/ferry/protocols"
)

// TestResourceLimitsBoundMemory: the resource manager's memory limits
// follow the config, not the machine: a peer holds at most 64 MiB and a
// frame per delivery protocol and two more, all peers together a bound set
// by connections.max, and one stream can hold the largest frame the
// config allows (a 64 MiB limit must not refuse a 64 MiB frame).
func TestResourceLimitsBoundMemory(t *testing.T) {
	for _, msg := range []int{protocols.DefaultMaxMessageBytes, MaxMessageBytesCap} {
		c := Default()
		c.Limits.MaxMessageBytes = msg
		l := resourceLimits(c).ToPartialLimitConfig()
		frame := int64(msg + protocols.FrameOverhead)
		peer := int64(peerMemoryBase) + int64(len(protocols.DeliveryProtocols)+2)*frame
		if got := int64(l.PeerDefault.Memory); got != peer {
			t.Errorf("max_message_bytes %d: peer memory %d, want %d", msg, got, peer)
		}
		if got := int64(l.ServicePeerDefault.Memory); got != peer {
			t.Errorf("max_message_bytes %d: service-peer memory %d, want %d", msg, got, peer)
		}
		if got := int64(l.Stream.Memory); got < frame+256<<10 {
			t.Errorf("max_message_bytes %d: stream memory %d holds no frame of %d and the handler's reservation", msg, got, frame)
		}
		if got := int64(l.ProtocolPeerDefault.Memory); got < frame+256<<10 {
			t.Errorf("max_message_bytes %d: protocol-peer memory %d holds no frame of %d", msg, got, frame)
		}
		total := int64(systemMemoryBase) + int64(c.Connections.Max)*systemMemoryPerConn + 4*peer
		if got := int64(l.System.Memory); got <= 0 || got > total {
			t.Errorf("max_message_bytes %d: system memory %d, want at most %d", msg, got, total)
		}
	}
}
