package store

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestOpenReturnsRegistrationErrors: a registry that already holds the
// store's metrics makes Open fail (it used to drop the error), and the
// failed Open releases the data directory.
func TestOpenReturnsRegistrationErrors(t *testing.T) {
	key, _ := newKey(t)
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	s, err := Open(dir, Options{Signer: key, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, Options{Signer: key, Registerer: reg})
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("second Open on the same registry: %v, want an AlreadyRegisteredError", err)
	}
	open(t, dir, key) // the directory is free again
}

// TestPebbleMemoryGauge: the store reports Pebble's memtables (allocated
// at open) and its block cache by part, and nothing once closed.
func TestPebbleMemoryGauge(t *testing.T) {
	key, _ := newKey(t)
	reg := prometheus.NewRegistry()
	s, err := Open(t.TempDir(), Options{Signer: key, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	parts := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "ferry_store_pebble_memory_bytes" {
				continue
			}
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
		return out
	}
	got := parts()
	if _, ok := got["cache"]; !ok || got["memtables"] <= 0 {
		t.Fatalf("pebble memory by part: %v, want cache and memtables > 0", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := parts(); len(got) != 0 {
		t.Fatalf("a closed store reports %v", got)
	}
}
