package propagate

import (
	"hash/maphash"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/store"
	"github.com/ferrynet/ferry/store/storepb"
)

// known is a Bloom filter of the resources this node holds (creator, data
// type and id), its own and its partners': a create of an id it has never
// held, the common case, needs no read of the store to rule out a conflict
// (an own create over an existing row, a partner's second create of one
// resource). It grows by adding a filter four times as large when the
// newest one is full (each key is in one of them), so it never forgets a
// key, not even one written in a commit still in flight. A key is looked
// up in every filter, so their false positives add up: each filter has 16
// bits a key and six probes (about 0.1-0.2% each), so that a node with a
// million resources, three or four filters, stays under 1% in all (at 10
// bits, four probes and doubling it had 3.8% at 600,000 resources, each a
// read of the store).
type known struct {
	mu   sync.Mutex
	seed maphash.Seed
	gens []*bloom
	// all: the rows could not all be read (a corrupt store): every
	// resource may be held, and each is looked up.
	all bool
}

// bloom is a blocked Bloom filter: a key's probes all fall in one block of
// 512 bits, one cache line, so adding or looking up a key misses the cache
// once per filter, not once per probe (the filters of a node that holds
// millions of resources are far larger than the caches, and every create
// looks them up).
type bloom struct {
	bits []uint64 // whole blocks of blockWords
	n    int      // keys added
	cap  int      // keys it is sized for (knownBits each, knownProbes probes)
}

const (
	knownProbes = 6
	knownBits   = 16 // bits a key
	knownGrowth = 4  // each filter holds this many times the keys of the one before
	blockWords  = 8  // 512 bits
)

// probe gives the word and bit of a key's i-th probe: the key's hash x
// picks the block, 9 bits per probe of another mix of it (y) the bit in it.
func (b *bloom) probe(x, y uint64, i int) (word int, bit uint64) {
	at := (y >> (9 * i)) & (blockWords*64 - 1)
	return int(x%uint64(len(b.bits)/blockWords))*blockWords + int(at/64), 1 << (at % 64)
}

func newKnown(capacity int) *known {
	k := &known{seed: maphash.MakeSeed()}
	k.grow(max(capacity, 1<<16))
	return k
}

func (k *known) grow(capacity int) {
	words := (capacity*knownBits + 63) / 64
	words = (words + blockWords - 1) / blockWords * blockWords
	k.gens = append(k.gens, &bloom{bits: make([]uint64, words), cap: capacity})
}

func (k *known) hashes(creator peer.ID, dataType, id string) (uint64, uint64) {
	var h maphash.Hash
	h.SetSeed(k.seed)
	_, _ = h.WriteString(string(creator))
	_ = h.WriteByte(0)
	_, _ = h.WriteString(dataType)
	_ = h.WriteByte(0)
	_, _ = h.WriteString(id)
	a := h.Sum64()
	// y: the in-block bits (bloom.probe), a finalizer's mix of a (each of
	// its bits depends on all of a's; x picks the block with a alone).
	y := (a ^ a>>30) * 0xbf58476d1ce4e5b9
	y = (y ^ y>>27) * 0x94d049bb133111eb
	return a, y ^ y>>31
}

// add records a resource.
func (k *known) add(creator peer.ID, dataType, id string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b := k.gens[len(k.gens)-1]
	if b.n >= b.cap {
		k.grow(knownGrowth * b.cap)
		b = k.gens[len(k.gens)-1]
	}
	x, y := k.hashes(creator, dataType, id)
	for i := range knownProbes {
		w, bit := b.probe(x, y, i)
		b.bits[w] |= bit
	}
	b.n++
}

// mayHold reports whether the resource may exist (false: it certainly
// does not).
func (k *known) mayHold(creator peer.ID, dataType, id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.all {
		return true
	}
	x, y := k.hashes(creator, dataType, id)
next:
	for _, b := range k.gens {
		for i := range knownProbes {
			if w, bit := b.probe(x, y, i); b.bits[w]&bit == 0 {
				continue next
			}
		}
		return true
	}
	return false
}

// loadKnown builds the filter from the resources this node holds (keys
// only).
func loadKnown(st *store.Store) (*known, error) {
	type key struct {
		creator      peer.ID
		dataType, id string
	}
	var held []key
	err := st.ResourceKeys(func(dataType string, creator peer.ID, id string) bool {
		held = append(held, key{creator, dataType, id})
		return true
	})
	if err != nil {
		return nil, err
	}
	k := newKnown(2 * len(held))
	for _, x := range held {
		k.add(x.creator, x.dataType, x.id)
	}
	return k, nil
}

// ownRow reads one of this node's resource rows inside a transaction,
// without a read when the filter rules it out.
func (s *Service) ownRow(tx *store.Txn, dataType string, self peer.ID, id string) (*storepb.Resource, error) {
	return s.heldRow(tx, self, dataType, id)
}

// heldRow reads a resource row inside a transaction, without a read when
// the filter rules it out.
func (s *Service) heldRow(tx *store.Txn, creator peer.ID, dataType, id string) (*storepb.Resource, error) {
	if !s.known.mayHold(creator, dataType, id) {
		return nil, store.ErrNotFound
	}
	return tx.GetResource(dataType, creator, id)
}

// noteOwn records a resource this node created.
func (s *Service) noteOwn(dataType, id string) { s.known.add(s.roles.Self(), dataType, id) }

// noteHeld records a resource row this node writes for a partner (before
// its commit: a key in the filter only costs a read).
func (s *Service) noteHeld(creator peer.ID, dataType, id string) { s.known.add(creator, dataType, id) }
