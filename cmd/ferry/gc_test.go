package main

import (
	"runtime/debug"
	"testing"
)

// TestTuneGC: a node collects at GOGC=400 within a soft limit of a quarter
// of its memory (at most 1 GiB, at least 256 MiB), unless the operator set
// GOGC or GOMEMLIMIT.
func TestTuneGC(t *testing.T) {
	pct := debug.SetGCPercent(100)
	lim := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(pct); debug.SetMemoryLimit(lim) })
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	for _, tc := range []struct {
		total     int64
		wantLimit int64
	}{
		{0, 1 << 30},         // unknown: 1 GiB
		{16 << 30, 1 << 30},  // a big machine: 1 GiB
		{2 << 30, 512 << 20}, // a quarter
		{512 << 20, 256 << 20},
	} {
		s := tuneGC(env(nil), tc.total)
		if s.Percent != 400 || s.Limit != tc.wantLimit || s.FromEnv {
			t.Errorf("total %d: got %+v, want GOGC 400 and limit %d", tc.total, s, tc.wantLimit)
		}
		if got := debug.SetGCPercent(-1); got != 400 {
			t.Errorf("runtime GOGC %d, want 400", got)
		}
		debug.SetGCPercent(400)
		if got := debug.SetMemoryLimit(-1); got != tc.wantLimit {
			t.Errorf("runtime memory limit %d, want %d", got, tc.wantLimit)
		}
	}

	// The operator's GOGC and GOMEMLIMIT win: the runtime read them at
	// start; tuneGC leaves what is in effect.
	debug.SetGCPercent(150)
	debug.SetMemoryLimit(3 << 30)
	s := tuneGC(env(map[string]string{"GOGC": "150", "GOMEMLIMIT": "3GiB"}), 16<<30)
	if s.Percent != 150 || s.Limit != 3<<30 || !s.FromEnv {
		t.Errorf("with GOGC and GOMEMLIMIT set: %+v", s)
	}
	if got := debug.SetGCPercent(-1); got != 150 {
		t.Errorf("runtime GOGC %d, want the operator's 150", got)
	}
}
