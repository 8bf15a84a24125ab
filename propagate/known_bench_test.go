package propagate

import (
	"strconv"
	"testing"
)

// BenchmarkKnownCreate is a create's filter work on a node that holds a
// million resources: a look-up of an id it never saw, then its add.
func BenchmarkKnownCreate(b *testing.B) {
	k := newKnown(0)
	ids := make([]string, 1<<20)
	for i := range ids {
		ids[i] = "r" + strconv.Itoa(i)
		k.add("A", "vm", ids[i])
	}
	b.ResetTimer()
	for i := range b.N {
		id := ids[i&(len(ids)-1)] + "x"
		if !k.mayHold("A", "vm", id) {
			k.add("A", "vm", id)
		}
	}
}
