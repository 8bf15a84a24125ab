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
