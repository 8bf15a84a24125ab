package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ferrynet/ferry/internal/lifecycle"
	"github.com/ferrynet/ferry/store"
)

// Waiting for space before the store opens (issue 16). A node whose disk
// filled up exits (health.go); once space is freed it must start again,
// whatever limits.min_free_disk_mb says. Opening the store replays its WAL
// into tables and starts a new WAL (store.RecoveryNeed): on a disk without
// that much free, Open would fail and the node exit in a loop. Instead
// ferry run calls WaitForStoreSpace first: it says in one line how much
// the store needs and how much is free, repeats it, answers /healthz and
// /readyz with 503 and that reason on admin.listen (the rest of the admin
// API says the same), and returns once the space exists, or when ctx ends
// (SIGTERM).

// Bounds of the wait.
const (
	// spaceCheckEvery is how often the free space is read while waiting.
	spaceCheckEvery = 500 * time.Millisecond
	// spaceLogEvery is how often the waiting line is repeated.
	spaceLogEvery = 10 * time.Second
)

// WaitForStoreSpace returns nil once the store under home has the free
// space it needs to open (at once, usually), or ctx's error if ctx ends
// first. A free space it cannot read is left to Open to report.
func WaitForStoreSpace(ctx context.Context, cfg Config, home Home, log *slog.Logger) error {
	if err := store.ReleaseWALSpace(home.DataPath()); err != nil {
		return err
	}
	need, err := store.RecoveryNeed(home.DataPath())
	if err != nil || need.Enough() {
		return nil
	}
	var mu sync.Mutex
	reason := "waiting for disk space: " + need.String()
	log.Warn("waiting for disk space before the store opens", "reason", need.String())
	stop := serveWaiting(cfg.Admin.Listen, log, func() string {
		mu.Lock()
		defer mu.Unlock()
		return reason
	})
	defer stop()
	tick := time.NewTicker(spaceCheckEvery)
	defer tick.Stop()
	logged := time.Now()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopped while waiting for disk space")
			return fmt.Errorf("wait for disk space: %w", ctx.Err())
		case <-tick.C:
		}
		need, err = store.RecoveryNeed(home.DataPath())
		if err != nil || need.Enough() {
			log.Info("disk space freed: opening the store", "free", fmt.Sprintf("%.1f MiB", float64(need.Free)/(1<<20)))
			return nil
		}
		mu.Lock()
		reason = "waiting for disk space: " + need.String()
		mu.Unlock()
		if time.Since(logged) >= spaceLogEvery {
			log.Warn("waiting for disk space before the store opens", "reason", need.String())
			logged = time.Now()
		}
	}
}

// serveWaiting answers every admin request with 503 and the reason while
// the node waits; stop closes it and waits for its goroutine. A listen
// that fails is logged (the log line is then the one signal).
func serveWaiting(addr string, log *slog.Logger, reason func() string) (stop func()) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Warn("admin api not up while waiting for disk space", "err", err.Error())
		return func() {}
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		why := reason()
		if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") || strings.HasPrefix(r.URL.Path, "/api/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]any{"live": false, "ready": false, "reason": why,
				"error": map[string]string{"code": "unavailable", "message": why}})
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "unavailable: "+why)
	})}
	var g lifecycle.Group
	g.Go(func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("admin api (waiting for disk space) stopped", "err", err.Error())
		}
	})
	return func() {
		_ = srv.Close()
		g.Close()
	}
}
