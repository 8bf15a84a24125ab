package protocols

import (
	"bytes"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// bodyDecoder decodes the bodies of one part without reflection: a
// receiver decodes every body it is sent, and proto.Unmarshal was close
// to half of OpenPart's time (a 200,000-create profile of the receiver),
// with an allocation per field. Bytes fields are copied into one arena per part (a body
// outlives the frame it came in), or, when the caller keeps the bodies'
// bytes unchanged for as long as the bodies live (kept), point into them;
// an origin or a data type equal to
// the one before shares it (the bodies of a part must not be changed in
// place). A body with anything this decoder does not expect (an unknown
// field, a field in another wire type) is handed to
// proto.Unmarshal, so the result is always what proto.Unmarshal gives.
type bodyDecoder struct {
	kept     bool // bytes fields point into the raw bodies instead of the arena
	arena    []byte
	origin   []byte // the last origin owned: a part's bodies share it
	dataType string
}

// newBodyDecoder sizes the arena for bodies of total bytes.
func newBodyDecoder(total int) *bodyDecoder {
	return &bodyDecoder{arena: make([]byte, 0, total)}
}

// own copies b into the arena (or, kept, is b, its capacity cut).
func (d *bodyDecoder) own(b []byte) []byte {
	if d.kept {
		return b[:len(b):len(b)]
	}
	if len(d.arena)+len(b) > cap(d.arena) {
		// Bodies beyond the size given: a new arena (never in OpenPart).
		d.arena = make([]byte, 0, max(len(b), 4096))
	}
	at := len(d.arena)
	d.arena = append(d.arena, b...)
	return d.arena[at:len(d.arena):len(d.arena)]
}

// decode fills b from raw, as proto.Unmarshal(raw, b) would on a zero b.
func (d *bodyDecoder) decode(raw []byte, b *pb.Body) error {
	if !d.fast(raw, b) {
		*b = pb.Body{}
		return proto.Unmarshal(raw, b)
	}
	return nil
}

// fast decodes raw into b and reports true, or reports false (b then
// half-filled) at the first thing it leaves to proto.Unmarshal: an
// unknown field, a known one in another wire type, invalid UTF-8 in the
// data type, a malformed encoding (proto.Unmarshal then names the error).
func (d *bodyDecoder) fast(raw []byte, b *pb.Body) bool {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return false
		}
		raw = raw[n:]
		switch {
		case typ == protowire.BytesType && (num == 1 || num == 4 || num == 5 || num == 7):
			v, m := protowire.ConsumeBytes(raw)
			if m < 0 {
				return false
			}
			raw = raw[m:]
			switch num {
			case 1:
				if d.origin == nil || !bytes.Equal(d.origin, v) {
					d.origin = d.own(v)
				}
				b.Origin = d.origin
			case 4:
				if d.dataType != string(v) { // no allocation for the comparison
					if !utf8.Valid(v) {
						return false
					}
					d.dataType = string(v)
				}
				b.DataType = d.dataType
			case 5:
				b.Payload = d.own(v)
			case 7:
				b.To = d.own(v)
			}
		case typ == protowire.VarintType && (num == 2 || num == 3 || num == 6 || num == 8):
			v, m := protowire.ConsumeVarint(raw)
			if m < 0 {
				return false
			}
			raw = raw[m:]
			switch num {
			case 2:
				b.OriginVersion = v
			case 3:
				b.Kind = pb.Kind(int32(v))
			case 6:
				b.CreatedAtUnixNano = int64(v)
			case 8:
				b.PrevVersion = v
			}
		default:
			return false
		}
	}
	return true
}
