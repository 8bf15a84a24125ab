package reviewgroup

// hclog.go: hashicorp/raft logs through hclog; this adapter sends its lines
// to the node's slog logger, with hclog's key/value pairs as slog attributes
// and its levels mapped (Trace below Debug). While the group closes, raft's
// complaints about the streams the close itself ends are logged at Debug.

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter implements hclog.Logger over slog.
type hclogAdapter struct {
	log     *slog.Logger
	name    string
	implied []any
	closing *atomic.Bool // set by the Group when Close begins
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHclog(l *slog.Logger, closing *atomic.Bool) *hclogAdapter {
	return &hclogAdapter{log: l, name: "raft", closing: closing}
}

// slogLevel maps an hclog level.
func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	lv := slogLevel(level)
	if lv > slog.LevelInfo && h.closing.Load() {
		lv = slog.LevelDebug
	}
	ctx := context.Background()
	if !h.log.Enabled(ctx, lv) {
		return
	}
	attrs := make([]any, 0, 2+len(h.implied)+len(args))
	attrs = append(attrs, "logger", h.name)
	attrs = append(attrs, h.implied...)
	attrs = append(attrs, args...)
	h.log.Log(ctx, lv, msg, attrs...)
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogAdapter) enabled(l hclog.Level) bool {
	return h.log.Enabled(context.Background(), slogLevel(l))
}

func (h *hclogAdapter) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hclogAdapter) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hclogAdapter) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hclogAdapter) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hclogAdapter) IsError() bool { return h.enabled(hclog.Error) }

func (h *hclogAdapter) ImpliedArgs() []any { return h.implied }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.implied = append(append([]any(nil), h.implied...), args...)
	return &c
}

func (h *hclogAdapter) Name() string { return h.name }

func (h *hclogAdapter) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel does nothing: the slog handler decides what is logged.
func (h *hclogAdapter) SetLevel(hclog.Level) {}

// GetLevel is the lowest hclog level the slog handler takes.
func (h *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn} {
		if h.enabled(l) {
			return l
		}
	}
	return hclog.Error
}

func (h *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return &lineWriter{h: h, level: level}
}

// lineWriter logs each line written to it.
type lineWriter struct {
	h     *hclogAdapter
	level hclog.Level
}

func (w *lineWriter) Write(p []byte) (int, error) {
	for line := range strings.SplitSeq(string(bytes.TrimRight(p, "\n")), "\n") {
		w.h.Log(w.level, line)
	}
	return len(p), nil
}
