package idem

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/ferrynet/ferry"
	"github.com/ferrynet/ferry/store"
)

func TestKeys(t *testing.T) {
	if r, err := New("op", ""); r != nil || err != nil {
		t.Fatalf("no key: %v %v", r, err)
	}
	for _, bad := range []string{strings.Repeat("k", store.MaxIdempotencyKeyBytes+1), "a\nb", "\xff"} {
		if _, err := New("op", bad); !errors.Is(err, ferry.ErrBadRequest) {
			t.Errorf("key %q: %v, want bad_request", bad, err)
		}
	}
	a, _ := New("op", "k", []byte("ab"), []byte("c"))
	b, _ := New("op", "k", []byte("a"), []byte("bc"))
	if a.hash == b.hash {
		t.Fatal("parts are not told apart from their concatenation")
	}
	if string(JSON([]byte(`{ "a" : [ 1, 2 ] }`))) != `{"a":[1,2]}` || string(JSON([]byte("not json"))) != "not json" {
		t.Fatal("JSON does not compact")
	}
}

// TestWrap: the first run records its answer with its writes; a repeat
// replays it and writes nothing; another request under the key is
// conflict; a failed run records nothing.
func TestWrap(t *testing.T) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir(), store.Options{Signer: priv})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	runs := 0
	do := func(r *Request, fail error) (first string, err error) {
		err = st.Update(ctx, Wrap(r, func() any { return map[string]int{"n": runs} }, func(b []byte) error {
			first = string(b)
			return nil
		}, func(tx *store.Txn) error {
			if fail != nil {
				return fail
			}
			runs++
			tx.SetAux("x", []byte{byte(runs)})
			return nil
		}))
		return first, err
	}
	r1, _ := New("op", "k", []byte("body"))
	if _, err := do(r1, errors.New("refused")); err == nil || runs != 0 {
		t.Fatalf("failed run: %v, runs %d", err, runs)
	}
	if first, err := do(r1, nil); err != nil || first != "" || runs != 1 {
		t.Fatalf("first run: %q %v, runs %d", first, err, runs)
	}
	if first, err := do(r1, nil); err != nil || first != `{"n":1}` || runs != 1 {
		t.Fatalf("repeat: %q %v, runs %d", first, err, runs)
	}
	other, _ := New("op", "k", []byte("other body"))
	if _, err := do(other, nil); !errors.Is(err, ferry.ErrConflict) || runs != 1 {
		t.Fatalf("another request under the key: %v, runs %d", err, runs)
	}
	if _, err := do(nil, nil); err != nil || runs != 2 {
		t.Fatalf("no key: %v, runs %d", err, runs)
	}
}
