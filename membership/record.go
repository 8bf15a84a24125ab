// Package membership makes a Ferry member known without a live connection:
// each node signs a record of itself (peer id, network, name, listen
// addresses, a sequence) with its libp2p key, and the records spread on the
// gossipsub topic /ferry/<network>/members/1.0.0, are pulled whole from a
// neighbour on /ferry/members/1.0.0 when a node joins, and ride in hello.
// A record has a lifetime: it names when it expires, its peer signs a new
// one every third of it, and a node drops a record at its expiry (the peer
// left, unless a newer record comes). Whether a peer is a partner or the
// reviewer is the local config's word, never the record's.
package membership

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/ferrynet/ferry/protocols/pb"
)

// Bounds of a record.
const (
	// MaxRecordBytes bounds a signed record as it travels.
	MaxRecordBytes = 4096
	// MaxAddrs bounds the addresses of a record.
	MaxAddrs = 32
	// MaxNameBytes bounds the name of a record.
	MaxNameBytes = 64
)

// signPrefix separates what a member record signature covers from every
// other use of the key.
const signPrefix = "ferry-member-record:"

// Errors of Open: a refused record wraps one of them.
var (
	ErrTooBig     = errors.New("member record too big")
	ErrMalformed  = errors.New("member record malformed")
	ErrSignature  = errors.New("member record signature invalid")
	ErrSigner     = errors.New("member record not signed by its peer")
	ErrNetwork    = errors.New("member record of another network")
	ErrNotAllowed = errors.New("peer is not in the members list")
	ErrStale      = errors.New("member record not newer than the one held")
	ErrExpired    = errors.New("member record expired")
)

// Record is what a peer says of itself, verified.
type Record struct {
	Peer    peer.ID
	Network string
	Name    string
	Addrs   []ma.Multiaddr
	Seq     uint64
	Version string
	// Expires is when the record stops making its peer a member (zero in
	// a record of an earlier release, which names no end: the service
	// then takes the signing time plus its own lifetime).
	Expires time.Time
	// Raw is the signed record as it travels (a marshaled
	// SignedMemberRecord).
	Raw []byte
}

// Sign builds the signed record of the key's peer; r.Peer is ignored (the
// key's peer id is used) and r.Raw is set.
func Sign(key crypto.PrivKey, r Record) (Record, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return Record{}, fmt.Errorf("member record: peer id: %w", err)
	}
	r.Peer = id
	m := &pb.MemberRecord{Peer: []byte(id), Network: r.Network, Name: r.Name, Seq: r.Seq, Version: r.Version}
	if !r.Expires.IsZero() {
		m.Expires = uint64(r.Expires.UnixNano())
	}
	for _, a := range r.Addrs {
		m.Addrs = append(m.Addrs, a.Bytes())
	}
	body, err := proto.Marshal(m)
	if err != nil {
		return Record{}, fmt.Errorf("member record: encode: %w", err)
	}
	sig, err := key.Sign(append([]byte(signPrefix), body...))
	if err != nil {
		return Record{}, fmt.Errorf("member record: sign: %w", err)
	}
	s := &pb.SignedMemberRecord{Record: body, Signature: sig}
	if _, err := id.ExtractPublicKey(); err != nil {
		// The id is a hash of the key (RSA): the key travels along.
		if s.PublicKey, err = crypto.MarshalPublicKey(key.GetPublic()); err != nil {
			return Record{}, fmt.Errorf("member record: public key: %w", err)
		}
	}
	if r.Raw, err = proto.Marshal(s); err != nil {
		return Record{}, fmt.Errorf("member record: encode: %w", err)
	}
	if len(r.Raw) > MaxRecordBytes {
		return Record{}, fmt.Errorf("%w: %d > %d bytes", ErrTooBig, len(r.Raw), MaxRecordBytes)
	}
	return r, nil
}

// Open verifies a signed record of network: its size, its form, its
// signature by the key of the peer id it names.
func Open(raw []byte, network string) (Record, error) {
	if len(raw) > MaxRecordBytes {
		return Record{}, fmt.Errorf("%w: %d > %d bytes", ErrTooBig, len(raw), MaxRecordBytes)
	}
	s := &pb.SignedMemberRecord{}
	if err := proto.Unmarshal(raw, s); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	m := &pb.MemberRecord{}
	if err := proto.Unmarshal(s.Record, m); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	id, err := peer.IDFromBytes(m.Peer)
	if err != nil {
		return Record{}, fmt.Errorf("%w: peer id: %w", ErrMalformed, err)
	}
	pk, err := id.ExtractPublicKey()
	if err != nil {
		if len(s.PublicKey) == 0 {
			return Record{}, fmt.Errorf("%w: no public key for %s", ErrSigner, id)
		}
		if pk, err = crypto.UnmarshalPublicKey(s.PublicKey); err != nil {
			return Record{}, fmt.Errorf("%w: public key: %w", ErrMalformed, err)
		}
		if !id.MatchesPublicKey(pk) {
			return Record{}, fmt.Errorf("%w: key is not %s's", ErrSigner, id)
		}
	}
	ok, err := pk.Verify(append([]byte(signPrefix), s.Record...), s.Signature)
	if err != nil || !ok {
		return Record{}, fmt.Errorf("%w: %s", ErrSignature, id)
	}
	if m.Network != network {
		return Record{}, fmt.Errorf("%w: %q", ErrNetwork, m.Network)
	}
	if m.Expires > math.MaxInt64 {
		return Record{}, fmt.Errorf("%w: expiry %d is past the year 2262", ErrMalformed, m.Expires)
	}
	if len(m.Name) > MaxNameBytes || len(m.Addrs) > MaxAddrs {
		return Record{}, fmt.Errorf("%w: %d name bytes, %d addresses", ErrTooBig, len(m.Name), len(m.Addrs))
	}
	r := Record{Peer: id, Network: m.Network, Name: m.Name, Seq: m.Seq, Version: m.Version, Raw: raw}
	if m.Expires != 0 {
		r.Expires = time.Unix(0, int64(m.Expires))
	}
	for _, b := range m.Addrs {
		if a, err := ma.NewMultiaddrBytes(b); err == nil {
			r.Addrs = append(r.Addrs, a)
		}
	}
	return r, nil
}
