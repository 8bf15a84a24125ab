package node_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ferrynet/ferry/node"
)

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHomeInitCreatesPrivateFiles(t *testing.T) {
	h := node.Home{Dir: filepath.Join(t.TempDir(), "nested", "home")}
	id, err := h.Init(node.InitOptions{Name: "site-a", Network: "labnet"})
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Validate(); err != nil {
		t.Fatalf("Init returned a bad peer id %q: %v", id, err)
	}
	for _, p := range []string{h.IdentityPath(), h.TokenPath()} {
		if m := fileMode(t, p); m != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), m)
		}
	}
	if fi, err := os.Stat(h.DataPath()); err != nil || !fi.IsDir() {
		t.Errorf("data dir: %v", err)
	}
	if m := fileMode(t, h.Dir); m&0o077 != 0 {
		t.Errorf("home dir has mode %v; others may enter it", m)
	}

	// The key is the peer id's.
	key, err := h.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if kid, _ := peer.IDFromPrivateKey(key); kid != id {
		t.Fatalf("identity.key is %s, Init said %s", kid, id)
	}
	// ferry.yaml holds the choices and validates.
	c, err := node.LoadFile(h.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "site-a" || c.Network != "labnet" {
		t.Fatalf("ferry.yaml: name %q network %q", c.Name, c.Network)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// The admin token is long enough to guess at nothing.
	tok, err := h.Token()
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) < 32 || strings.ContainsAny(tok, " \n") {
		t.Fatalf("admin token %q", tok)
	}
}

func TestHomeInitIsIdempotent(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	id1, err := h.Init(node.InitOptions{Name: "first"})
	if err != nil {
		t.Fatal(err)
	}
	key1, tok1 := readFile(t, h.IdentityPath()), readFile(t, h.TokenPath())
	// The operator edits ferry.yaml; a second Init must not undo it.
	edited := append(readFile(t, h.ConfigPath()), []byte("# operator's note\n")...)
	if err := os.WriteFile(h.ConfigPath(), edited, 0o644); err != nil {
		t.Fatal(err)
	}
	id2, err := h.Init(node.InitOptions{Name: "second", Network: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 {
		t.Fatalf("second Init changed the peer id: %s then %s", id1, id2)
	}
	if !bytes.Equal(key1, readFile(t, h.IdentityPath())) {
		t.Fatal("second Init rewrote identity.key")
	}
	if !bytes.Equal(tok1, readFile(t, h.TokenPath())) {
		t.Fatal("second Init rewrote admin.token")
	}
	if !bytes.Equal(edited, readFile(t, h.ConfigPath())) {
		t.Fatal("second Init rewrote ferry.yaml")
	}
	c, err := node.LoadFile(h.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "first" {
		t.Fatalf("second Init changed the name to %q", c.Name)
	}
	// A removed token is recreated, the rest kept.
	if err := os.Remove(h.TokenPath()); err != nil {
		t.Fatal(err)
	}
	if id3, err := h.Init(node.InitOptions{}); err != nil || id3 != id1 {
		t.Fatalf("Init after token removal: %s %v", id3, err)
	}
	if m := fileMode(t, h.TokenPath()); m != 0o600 {
		t.Fatalf("recreated token has mode %v", m)
	}
	if bytes.Equal(tok1, readFile(t, h.TokenPath())) {
		t.Fatal("recreated token equals the old one")
	}
}

func TestHomeIdentityRefusesReadableKey(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	if _, err := h.Init(node.InitOptions{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(h.IdentityPath(), mode); err != nil {
			t.Fatal(err)
		}
		_, err := h.Identity()
		if err == nil {
			t.Fatalf("Identity accepted a key with mode %v", mode)
		}
		if !strings.Contains(err.Error(), "chmod") || !strings.Contains(err.Error(), h.IdentityPath()) {
			t.Fatalf("mode %v: error %q should name the file and say chmod", mode, err)
		}
		// Init goes through Identity too, and must not replace the key.
		if _, err := h.Init(node.InitOptions{}); err == nil || !strings.Contains(err.Error(), "chmod") {
			t.Fatalf("Init with a %v key: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		if err := os.Chmod(h.IdentityPath(), mode); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Identity(); err != nil {
			t.Fatalf("mode %v refused: %v", mode, err)
		}
	}
}

func TestHomeIdentityRefusesGarbage(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	garbage := []byte("this is not a key\n")
	if err := os.WriteFile(h.IdentityPath(), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := h.Identity()
	if err == nil {
		t.Fatal("Identity accepted garbage")
	}
	if !strings.Contains(err.Error(), h.IdentityPath()) || !strings.Contains(err.Error(), "not a libp2p private key") {
		t.Fatalf("garbage key: unclear error %q", err)
	}
	// Init does not paper over it by writing a new key.
	if _, err := h.Init(node.InitOptions{}); err == nil {
		t.Fatal("Init accepted a garbage key")
	}
	if !bytes.Equal(garbage, readFile(t, h.IdentityPath())) {
		t.Fatal("Init overwrote the garbage key")
	}
	// An empty key file is garbage too.
	if err := os.WriteFile(h.IdentityPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Identity(); err == nil {
		t.Fatal("Identity accepted an empty key file")
	}
	// A missing one says so.
	if err := os.Remove(h.IdentityPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Identity(); err == nil || !strings.Contains(err.Error(), "identity key") {
		t.Fatalf("missing key: %v", err)
	}
}

func TestHomeTokenAndDefaultHome(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	if _, err := h.Token(); err == nil {
		t.Fatal("Token of an empty home succeeded")
	}
	if err := os.WriteFile(h.TokenPath(), []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Token(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("blank token: %v", err)
	}
	if err := os.WriteFile(h.TokenPath(), []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := h.Token(); err != nil || tok != "abc" {
		t.Fatalf("token %q %v", tok, err)
	}
	dir := t.TempDir()
	t.Setenv("FERRY_HOME", dir)
	if got := node.DefaultHome(); got != dir {
		t.Fatalf("DefaultHome = %q with FERRY_HOME=%q", got, dir)
	}
	t.Setenv("FERRY_HOME", "")
	if got := node.DefaultHome(); !strings.HasSuffix(got, ".ferry") {
		t.Fatalf("DefaultHome = %q without FERRY_HOME", got)
	}
}

func TestHomeInitRefusesBadName(t *testing.T) {
	h := node.Home{Dir: t.TempDir()}
	_, err := h.Init(node.InitOptions{Name: "no spaces please"})
	if err == nil || !strings.HasPrefix(err.Error(), "config: name: ") {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := os.Stat(h.ConfigPath()); !os.IsNotExist(err) {
		t.Fatalf("a ferry.yaml was written for a bad name: %v", err)
	}
}
