package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// The Go collector's defaults (GOGC=100, no memory limit) spend a fifth of
// a busy node's CPU on garbage collection: every change allocates its
// request, its record, its reply and its frames, and the heap the store
// keeps (Pebble's block cache and memtables are Go memory without cgo) is
// rescanned at every cycle. A node collects less often instead, within a
// soft memory limit that keeps it from growing where memory is short:
// with GOGC=400 the collector runs a quarter as often (measured on the
// benchmark of docs/BENCHMARKS.md: about 20% less CPU per change at A and
// B, for about twice the resident memory under full load), and the limit
// makes it collect more often again once the heap nears it. GOGC and
// GOMEMLIMIT set by the operator win (operations.md, "Memory and CPU").
const (
	gcPercent    = 400
	memLimitMax  = 1 << 30   // the soft limit on a machine with 4 GiB or more
	memLimitMin  = 256 << 20 // never below: the store alone needs about 150 MiB
	memLimitPart = 4         // a quarter of the machine's (or cgroup's) memory
)

// gcSettings is how the node's collector runs, for the start line.
type gcSettings struct {
	Percent  int    // GOGC in effect
	Limit    int64  // soft memory limit in bytes; 0: none
	FromEnv  bool   // the operator set GOGC or GOMEMLIMIT
	LimitSrc string // where the limit came from
}

func (s gcSettings) String() string {
	lim := "none"
	if s.Limit > 0 && s.Limit != mathMaxInt64 {
		lim = strconv.FormatInt(s.Limit>>20, 10) + " MiB"
	}
	return fmt.Sprintf("GOGC=%d, soft memory limit %s (%s)", s.Percent, lim, s.LimitSrc)
}

const mathMaxInt64 = 1<<63 - 1

// tuneGC sets the collector for a node unless the environment says how.
// total is the memory the process may use (machine or cgroup), 0 if
// unknown.
func tuneGC(getenv func(string) string, total int64) gcSettings {
	s := gcSettings{Percent: 100, LimitSrc: "GOMEMLIMIT"}
	if v := getenv("GOGC"); v != "" {
		s.FromEnv = true
		s.Percent = debug.SetGCPercent(-1) // read what the runtime parsed
		debug.SetGCPercent(s.Percent)
	} else {
		debug.SetGCPercent(gcPercent)
		s.Percent = gcPercent
	}
	if getenv("GOMEMLIMIT") != "" {
		s.FromEnv = true
		s.Limit = debug.SetMemoryLimit(-1)
		return s
	}
	limit := int64(memLimitMax)
	s.LimitSrc = "1 GiB"
	if total > 0 && total/memLimitPart < limit {
		limit = max(total/memLimitPart, memLimitMin)
		s.LimitSrc = "a quarter of " + strconv.FormatInt(total>>20, 10) + " MiB"
	}
	debug.SetMemoryLimit(limit)
	s.Limit = limit
	return s
}

// memoryAvailable is the memory this process may use: the machine's, or
// its cgroup's limit when lower (a container). 0 when neither can be read.
func memoryAvailable() int64 {
	var total int64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					total = kb << 10
				}
				break
			}
		}
	}
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 && (total == 0 || n < total) {
			total = n
		}
		break
	}
	return total
}
