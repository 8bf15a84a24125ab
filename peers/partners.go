package peers

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Partners that are not Ferry nodes. A Ferry node learns a member's
// addresses from its signed membership record (kept a day) and from hello
// (kept 15 minutes); a peer written in another language may send neither,
// and a connection it opened leaves only its ephemeral port behind. So a
// partner may be given with its address, in `partners` (a multiaddr ending
// in /p2p/<peer id>) or by `ferry partners add MULTIADDR`: the address is
// kept in the peer book (the operator's in the store, the config's for as
// long as the config says so) and goes into the peerstore for good
// (peerstore.PermanentAddrTTL) when the node starts, so the sender and
// discovery dial it whenever the partner is owed something.

// ParsePartner reads one `partners` entry or `ferry partners add` argument:
// a peer id, or a multiaddr ending in /p2p/<peer id> (the address to dial
// it at). The error says which forms are taken.
func ParsePartner(s string) (peer.AddrInfo, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "/") {
		id, err := peer.Decode(s)
		if err != nil {
			return peer.AddrInfo{}, fmt.Errorf("%q is neither a peer id nor a multiaddr ending in /p2p/<peer id>: %w", s, err)
		}
		return peer.AddrInfo{ID: id}, nil
	}
	ai, err := peer.AddrInfoFromString(s)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("%q is neither a peer id nor a multiaddr ending in /p2p/<peer id>: %w", s, err)
	}
	return *ai, nil
}

// auxPartnerAddrs + peer id is where the store keeps the addresses an
// operator gave with `ferry partners add MULTIADDR`.
const auxPartnerAddrs = "peers/partner_addrs/"

// encodeAddrs is a list of binary multiaddrs, each after its length as an
// unsigned varint.
func encodeAddrs(addrs []ma.Multiaddr) []byte {
	var b []byte
	for _, a := range addrs {
		raw := a.Bytes()
		b = binary.AppendUvarint(b, uint64(len(raw)))
		b = append(b, raw...)
	}
	return b
}

func decodeAddrs(b []byte) ([]ma.Multiaddr, error) {
	var out []ma.Multiaddr
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("partner addresses: bad length")
		}
		a, err := ma.NewMultiaddrBytes(b[k : k+int(n)])
		if err != nil {
			return nil, fmt.Errorf("partner addresses: %w", err)
		}
		out = append(out, a)
		b = b[k+int(n):]
	}
	return out, nil
}

// mergeAddrs adds to `have` the addresses of `more` it lacks.
func mergeAddrs(have, more []ma.Multiaddr) []ma.Multiaddr {
	for _, a := range more {
		if !slices.ContainsFunc(have, a.Equal) {
			have = append(have, a)
		}
	}
	return have
}

// PartnerAddrs lists, for each partner given with an address (in the
// config or by an operator), the addresses to dial it at.
func (b *Book) PartnerAddrs() map[peer.ID][]ma.Multiaddr {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make(map[peer.ID][]ma.Multiaddr, len(b.partnerAddrs))
	for p, addrs := range b.partnerAddrs {
		if b.partners[p] {
			out[p] = slices.Clone(addrs)
		}
	}
	return out
}

// loadPartnerAddrs reads the operator's partner addresses over the
// config's; b is not shared yet.
func (b *Book) loadPartnerAddrs(c Config) error {
	for p, addrs := range c.PartnerAddrs {
		b.partnerAddrs[p] = mergeAddrs(nil, addrs)
	}
	kept, err := b.st.AuxPrefix(auxPartnerAddrs)
	if err != nil {
		return fmt.Errorf("load partner addresses: %w", err)
	}
	for name, v := range kept {
		p, err := peer.Decode(strings.TrimPrefix(name, auxPartnerAddrs))
		if err != nil {
			continue
		}
		addrs, err := decodeAddrs(v)
		if err != nil {
			return fmt.Errorf("partner %s: %w", p, err)
		}
		b.partnerAddrs[p] = mergeAddrs(b.partnerAddrs[p], addrs)
	}
	return nil
}
