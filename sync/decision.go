package sync

import (
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

func decisionSequence(b *pb.Body) uint64 {
	d := &pb.ReviewDecision{}
	if proto.Unmarshal(b.Payload, d) != nil {
		return 0
	}
	return d.Sequence
}
