package propagate

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
)

func peerOf(b *pb.Body) peer.ID { return peer.ID(b.Origin) }
