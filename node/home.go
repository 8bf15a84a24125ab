package node

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Home is a node's directory: identity.key, ferry.yaml, data/, admin.token.
type Home struct{ Dir string }

// DefaultHome is $FERRY_HOME, else ~/.ferry.
func DefaultHome() string {
	if h := os.Getenv("FERRY_HOME"); h != "" {
		return h
	}
	if u, err := os.UserHomeDir(); err == nil {
		return filepath.Join(u, ".ferry")
	}
	return ".ferry"
}

// Paths within a home.
func (h Home) IdentityPath() string { return filepath.Join(h.Dir, IdentityFile) }
func (h Home) ConfigPath() string   { return filepath.Join(h.Dir, ConfigFile) }
func (h Home) TokenPath() string    { return filepath.Join(h.Dir, TokenFile) }
func (h Home) DataPath() string     { return filepath.Join(h.Dir, DataDir) }

// InitOptions are the choices `ferry init` offers.
type InitOptions struct {
	Name    string
	Network string
}

// Init creates what is missing in the home: the identity key (mode 0600),
// a default ferry.yaml, admin.token (0600) and data/. It never overwrites.
// It returns the node's peer id.
func (h Home) Init(o InitOptions) (peer.ID, error) {
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		return "", fmt.Errorf("create home %s: %w", h.Dir, err)
	}
	if _, err := os.Stat(h.IdentityPath()); errors.Is(err, os.ErrNotExist) {
		priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return "", fmt.Errorf("generate identity: %w", err)
		}
		b, err := crypto.MarshalPrivateKey(priv)
		if err != nil {
			return "", fmt.Errorf("encode identity: %w", err)
		}
		if err := writeNew(h.IdentityPath(), b, 0o600); err != nil {
			return "", err
		}
	}
	key, err := h.Identity()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(h.ConfigPath()); errors.Is(err, os.ErrNotExist) {
		c := Default()
		if o.Name != "" {
			c.Name = o.Name
		}
		if o.Network != "" {
			c.Network = o.Network
		}
		if err := c.Validate(); err != nil {
			return "", err
		}
		if err := c.Save(h.ConfigPath()); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat(h.TokenPath()); errors.Is(err, os.ErrNotExist) {
		var t [24]byte
		if _, err := rand.Read(t[:]); err != nil {
			return "", fmt.Errorf("generate admin token: %w", err)
		}
		if err := writeNew(h.TokenPath(), []byte(hex.EncodeToString(t[:])+"\n"), 0o600); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(h.DataPath(), 0o700); err != nil {
		return "", fmt.Errorf("create data dir: %w", err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("peer id: %w", err)
	}
	return id, nil
}

func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// Identity reads the identity key, refusing one that others may read.
func (h Home) Identity() (crypto.PrivKey, error) {
	fi, err := os.Stat(h.IdentityPath())
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity key %s has mode %v: it must not be readable by group or others (chmod 600)", h.IdentityPath(), fi.Mode().Perm())
	}
	b, err := os.ReadFile(h.IdentityPath())
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	key, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("identity key %s is not a libp2p private key: %w", h.IdentityPath(), err)
	}
	return key, nil
}

// Token reads the admin API bearer token.
func (h Home) Token() (string, error) {
	b, err := os.ReadFile(h.TokenPath())
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("admin token %s is empty", h.TokenPath())
	}
	return t, nil
}

// LoadConfig reads ferry.yaml and applies FERRY_* environment overrides.
func (h Home) LoadConfig() (Config, error) {
	c, err := LoadFile(h.ConfigPath())
	if err != nil {
		return c, err
	}
	if err := c.ApplyEnv(os.LookupEnv); err != nil {
		return c, err
	}
	return c, nil
}
