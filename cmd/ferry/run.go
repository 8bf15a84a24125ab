package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/node"
)

func (g *globals) homeDir() node.Home {
	if g.home != "" {
		return node.Home{Dir: g.home}
	}
	return node.Home{Dir: node.DefaultHome()}
}

func initCmd(g *globals) *cobra.Command {
	var o node.InitOptions
	c := &cobra.Command{
		Use:   "init",
		Short: "Create the identity key (0600), a default ferry.yaml and admin.token; print the peer id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h := g.homeDir()
			if err := initOverExisting(h, o); err != nil {
				return err
			}
			id, err := h.Init(o)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			return nil
		},
	}
	c.Flags().StringVar(&o.Name, "name", "", "the node's name, shown in tables (default: the host name)")
	c.Flags().StringVar(&o.Network, "network", "", "the network name members share (default ferry)")
	return c
}

// initOverExisting refuses `init --name` or `--network` on a home that has
// a ferry.yaml saying otherwise: init never rewrites a configuration, and
// keeping the old name in silence would leave the operator believing it
// changed.
func initOverExisting(h node.Home, o node.InitOptions) error {
	if _, err := os.Stat(h.ConfigPath()); err != nil {
		return nil // a new home (or one without a config): init writes it
	}
	cfg, err := h.LoadConfig()
	if err != nil {
		return err
	}
	for _, x := range []struct{ flag, asked, has string }{{"name", o.Name, cfg.Name}, {"network", o.Network, cfg.Network}} {
		if x.asked != "" && x.asked != x.has {
			return fmt.Errorf("%s is initialised already with %s %q; init does not change it (--%s %q): edit %s, then restart the node",
				h.Dir, x.flag, x.has, x.flag, x.asked, h.ConfigPath())
		}
	}
	return nil
}

// libp2pLevel keeps go-libp2p's logs to warnings and errors unless the
// node logs at debug: its info lines are noise to an operator.
type libp2pLevel struct {
	slog.Handler
	debug bool
}

func (l libp2pLevel) Enabled(ctx context.Context, lv slog.Level) bool {
	return (l.debug || lv >= slog.LevelWarn) && l.Handler.Enabled(ctx, lv)
}

func (l libp2pLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return libp2pLevel{l.Handler.WithAttrs(as), l.debug}
}

func (l libp2pLevel) WithGroup(name string) slog.Handler {
	return libp2pLevel{l.Handler.WithGroup(name), l.debug}
}

// settingFlag is a `run` flag that overrides a configuration key: its text
// is parsed by the key's Setting after the config file is read (so an error
// names the flag and the key), and help shows the key's type.
type settingFlag struct {
	v   *string
	typ string
}

func (f *settingFlag) String() string { return *f.v }
func (f *settingFlag) Set(s string) error {
	var err error
	switch f.typ {
	case "int":
		_, err = strconv.Atoi(s)
	case "float":
		_, err = strconv.ParseFloat(s, 64)
	case "bool":
		_, err = strconv.ParseBool(s)
	}
	if err != nil {
		return fmt.Errorf("%q is not %s", s, map[string]string{"int": "a whole number", "float": "a number", "bool": "true or false"}[f.typ])
	}
	*f.v = s
	return nil
}
func (f *settingFlag) Type() string { return f.typ }

func runCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the node until SIGINT or SIGTERM (initialises an empty home first)",
		Long: "Run the node until SIGINT or SIGTERM. Every ferry.yaml key can be overridden by an\n" +
			"environment variable (nats.url: FERRY_NATS_URL) or a flag (--nats-url); lists are comma-separated.",
		Args: cobra.NoArgs,
	}
	// One flag per configuration key, generated from the config itself.
	defaults := node.Default()
	settings := defaults.Settings()
	vals := make([]string, len(settings))
	for i, s := range settings {
		f := c.Flags().VarPF(&settingFlag{v: &vals[i], typ: s.Type()}, s.Flag, "", "override "+s.Key+" (env "+s.Env+")")
		if s.Type() == "bool" {
			f.NoOptDefVal = "true" // --trust-store alone means true
		}
	}
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		h := g.homeDir()
		if _, err := h.Init(node.InitOptions{}); err != nil {
			return err
		}
		cfg, err := h.LoadConfig()
		if err != nil {
			return err
		}
		for i, s := range cfg.Settings() {
			if cmd.Flags().Changed(settings[i].Flag) {
				if err := cfg.SetFrom(s, "--"+s.Flag, vals[i]); err != nil {
					return err
				}
			}
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		// The home is this process's from here on (another ferry run on it
		// is told which process holds it); the node owns the lock.
		lock, err := h.Lock(cfg.Name)
		if err != nil {
			return err
		}
		nodeOwnsLock := false
		defer func() {
			if !nodeOwnsLock {
				_ = lock.Unlock()
			}
		}()
		// A CPU profile of the whole run, for `go tool pprof`: where a
		// node's time goes under a real load.
		stopProfile, err := recordRun("FERRY_CPUPROFILE", pprof.StartCPUProfile, pprof.StopCPUProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
		// An execution trace of the whole run, for `go tool trace`: where
		// a node waits (syscalls, the scheduler, the collector).
		stopTrace, err := recordRun("FERRY_TRACE", trace.Start, trace.Stop)
		if err != nil {
			return err
		}
		defer stopTrace()
		if path := os.Getenv("FERRY_MEMPROFILE"); path != "" {
			// A heap profile written when the node stops: what it holds
			// after a long run.
			defer func() {
				if f, err := os.Create(path); err == nil {
					_ = pprof.Lookup("heap").WriteTo(f, 0)
					_ = f.Close()
				}
			}()
		}
		log := node.NewLogger(cfg.Log, os.Stderr)
		node.RouteLibp2pLogs(libp2pLevel{log.Handler(), cfg.Log.Level == "debug"})
		log.Debug("garbage collector", "settings", tuneGC(os.Getenv, memoryAvailable()).String())
		// Signals are caught from here on: one that comes while the node
		// starts stops it once it has started.
		sigs := make(chan os.Signal, 2)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sigs)
		// A store that needs more free space to open than there is waits
		// for it (unhealthy), instead of failing at every start.
		waitCtx, stopWait := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err = node.WaitForStoreSpace(waitCtx, cfg, h, log)
		stopWait()
		if err != nil {
			return nil // stopped by a signal while it waited
		}
		stderr := cmd.ErrOrStderr()
		nodeOwnsLock = true
		n, err := node.New(cfg, h, node.Options{Logger: log, HomeLock: lock, OnFatal: func(err error) {
			// Pebble cannot go on: one line, and exit at once (what was
			// acknowledged is on disk).
			fmt.Fprintf(stderr, "ferry: store failed: %v; exiting so that the store is reopened (nothing acknowledged is lost)\n", err)
			os.Exit(1)
		}})
		if err != nil {
			return err
		}
		if err := n.Start(); err != nil {
			_ = n.Close()
			return err
		}
		token, _ := h.Token()
		home, _ := filepath.Abs(h.Dir)
		self := selfCommand()
		fmt.Fprintf(stderr, "ferry %s running: peer %s (Ctrl-C stops)\n"+
			"  home     %s   (operate it: export FERRY_HOME=%s; %s status, %s watch)\n"+
			"  nats     %s   (apps: nats req %s.propagate ...)\n"+
			"  console  http://%s/#token=%s\n"+
			"  admin    http://%s/api/v1/   (bearer token in %s)\n"+
			"  metrics  http://%s/metrics\n",
			cfg.Name, n.ID(), home, home, self, self, n.NATSURL(), cfg.NATS.Prefix, n.AdminAddr(), token, n.AdminAddr(), h.TokenPath(), n.AdminAddr())
		var cause error
		select {
		case sig := <-sigs:
			log.Info("stopping", "signal", sig.String())
		case cause = <-n.Fatal():
		}
		return stop(n, sigs, cause)
	}
	return c
}

// shutdownTimeout bounds the stop: the drain (node.DefaultDrainTimeout),
// the services, the store (node.StoreCloseTimeout), the NATS flush.
const shutdownTimeout = 30 * time.Second

// stop closes the node within shutdownTimeout; a second signal ends the
// wait at once. cause, when the node stopped itself, is what run returns.
func stop(n *node.Node, sigs <-chan os.Signal, cause error) error {
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	select {
	case err := <-closed:
		if cause != nil {
			return cause
		}
		return err
	case sig := <-sigs:
		return fmt.Errorf("second signal (%s): exiting before the shutdown finished", sig)
	case <-time.After(shutdownTimeout):
		if cause != nil {
			return fmt.Errorf("%w (and the shutdown did not finish within %v)", cause, shutdownTimeout)
		}
		return fmt.Errorf("shutdown did not finish within %v; exiting", shutdownTimeout)
	}
}

// recordRun starts a recording of the whole run (start, ended by stop) into
// the file the environment variable env names, if it names one; the
// returned func stops it and closes the file.
func recordRun(env string, start func(io.Writer) error, stop func()) (func(), error) {
	path := os.Getenv(env)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", env, err)
	}
	if err := start(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%s: %w", env, err)
	}
	return func() { stop(); _ = f.Close() }, nil
}
