package natsbridge

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Connect opens another client connection to the node's NATS (in process
// to the embedded server, else to the external URL with the bridge's
// credentials), for a component that should not share the apps' one (the
// events stream's publisher). The caller closes it.
func (b *Bridge) Connect(name string) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(b.o.ConnectTimeout),
	}
	if b.o.Token != "" {
		opts = append(opts, nats.Token(b.o.Token))
	}
	if b.srv != nil {
		nc, err := nats.Connect("", append(opts, nats.InProcessServer(b.srv))...)
		if err != nil {
			return nil, fmt.Errorf("connect to embedded nats: %w", err)
		}
		return nc, nil
	}
	if b.o.Credentials != "" {
		opts = append(opts, nats.UserCredentials(b.o.Credentials))
	}
	nc, err := nats.Connect(b.o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats at %s: %w", b.o.URL, err)
	}
	return nc, nil
}

// JetStreamEmbedded reports whether the embedded server runs JetStream.
func (b *Bridge) JetStreamEmbedded() bool { return b.srv != nil && b.o.JetStreamDir != "" }

// RestartJetStream stops and starts the embedded server's JetStream, which
// reopens every stream from its files. JetStream's file store keeps a
// write error (ENOSPC: a full disk) for good and answers no publish after
// it; a restart once space is back is the way out. Client connections stay
// up. It fails with an external server.
func (b *Bridge) RestartJetStream() error {
	if !b.JetStreamEmbedded() {
		return errors.New("jetstream is not embedded: restart the nats server")
	}
	cfg := b.srv.JetStreamConfig()
	if b.srv.JetStreamEnabled() {
		if err := b.srv.DisableJetStream(); err != nil {
			return fmt.Errorf("stop jetstream: %w", err)
		}
	}
	if cfg == nil {
		return errors.New("jetstream has no configuration")
	}
	// JetStreamConfig names the store's jetstream/ directory itself, and
	// EnableJetStream adds jetstream/ to what it is given: give it the
	// directory the server started with.
	cfg.StoreDir = b.o.JetStreamDir
	if err := b.srv.EnableJetStream(cfg); err != nil {
		return fmt.Errorf("start jetstream: %w", err)
	}
	return nil
}

// JetStreamMaxStore is what the embedded JetStream may store in all (its
// max_store: by default three quarters of the disk space free when it
// started); 0 when it is not embedded.
func (b *Bridge) JetStreamMaxStore() int64 {
	if !b.JetStreamEmbedded() {
		return 0
	}
	if c := b.srv.JetStreamConfig(); c != nil && c.MaxStore > 0 {
		return c.MaxStore
	}
	return 0
}
