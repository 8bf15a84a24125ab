package propagate

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/protocols/pb"
)

func peerOf(b *pb.Body) peer.ID { return peer.ID(b.Origin) }

// ResourceID reads a resource document's id (as text: a string, or a
// number as written) without decoding the document.
func ResourceID(doc []byte) (string, bool) {
	id, _, err := checkResource(doc)
	return id, err == nil
}
