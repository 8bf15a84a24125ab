package propagate

import (
	"fmt"
	"testing"
)

// The filter never forgets a resource it was told of, and rules out most
// of those it was not.
func TestKnownHasNoFalseNegatives(t *testing.T) {
	k := newKnown(0) // 65,536 keys, then it grows
	const n = 1_000_000
	for i := range n {
		k.add("A", "vm", fmt.Sprint("in", i))
	}
	for i := range n {
		if !k.mayHold("A", "vm", fmt.Sprint("in", i)) {
			t.Fatalf("in%d forgotten", i)
		}
	}
	if len(k.gens) < 2 {
		t.Fatalf("%d generations after %d keys", len(k.gens), n)
	}
	fp := 0
	for i := range n {
		if k.mayHold("A", "vm", fmt.Sprint("out", i)) {
			fp++
		}
	}
	t.Logf("%d of %d absent resources may be held (%.2f%%)", fp, n, 100*float64(fp)/n)
	// Every filter adds its false positives (each one a read of the
	// store): with three filters, under 1% in all.
	if fp > n/100 {
		t.Fatalf("%d of %d absent resources may be held: the filter rules out too little", fp, n)
	}
	if k.mayHold("A", "other", "in1") && k.mayHold("A", "other", "in2") && k.mayHold("A", "other", "in3") {
		t.Fatal("the data type is not part of the key")
	}
	if k.mayHold("B", "vm", "in1") && k.mayHold("B", "vm", "in2") && k.mayHold("B", "vm", "in3") {
		t.Fatal("the creator is not part of the key")
	}
}
