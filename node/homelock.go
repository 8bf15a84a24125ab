package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A home is run by one process at a time. The process that runs a node on
// it holds an exclusive lock of LockFile (flock: the kernel releases it
// when the process ends, even by SIGKILL, so a held lock always means a
// live process) and writes in it who it is: pid, command, node name, start
// time. A second `ferry run` on the home reads that and says which process
// to stop, before it touches anything (before the store's own lock would
// answer "resource temporarily unavailable").
//
// The file stays when the node stops, with the last holder's record (only a
// held lock makes a record current): removing it would let a process that
// opened it just before lock a file no longer in the home while a third
// creates and locks a new one. The record is written over the last one in
// place, so a full disk does not stop the next start (a node that cannot
// write any record still runs; a second run then hears that the home is in
// use by a process that did not record its pid).

// LockFile is the home's lock and the record of who holds it.
const LockFile = "ferry.lock"

// Holder is the process a home's lock names.
type Holder struct {
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Node    string    `json:"node"`
	Started time.Time `json:"started"`
}

// ErrHomeInUse is what Lock's error wraps when another process holds the
// home.
var ErrHomeInUse = errors.New("home in use")

// HomeInUseError says which process holds a home.
type HomeInUseError struct {
	Dir    string
	Holder *Holder // nil: the holder has not written its record yet
}

func (e *HomeInUseError) Error() string {
	who := "another process (it has not recorded its pid: it is starting, or its disk was full)"
	if h := e.Holder; h != nil {
		cmd := h.Command
		if cmd == "" {
			cmd = "a process"
		}
		var parts []string
		parts = append(parts, fmt.Sprintf("pid %d", h.PID))
		if h.Node != "" {
			parts = append(parts, "node "+h.Node)
		}
		if !h.Started.IsZero() {
			parts = append(parts, "started "+h.Started.UTC().Format("2006-01-02 15:04:05 UTC"))
		}
		who = fmt.Sprintf("%s (%s)", cmd, strings.Join(parts, ", "))
	}
	return fmt.Sprintf("home %s is in use by %s; stop it first or use another --home", e.Dir, who)
}

// Is makes errors.Is(err, ErrHomeInUse) hold.
func (e *HomeInUseError) Is(target error) bool { return target == ErrHomeInUse }

// HomeLock is a home held by this process; Unlock lets it go.
type HomeLock struct {
	f *os.File
}

// LockPath is the home's lock file.
func (h Home) LockPath() string { return filepath.Join(h.Dir, LockFile) }

// Lock takes the home for this process, recording node as the node's
// name, or says who holds it (a *HomeInUseError).
func (h Home) Lock(node string) (*HomeLock, error) {
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create home %s: %w", h.Dir, err)
	}
	f, err := os.OpenFile(h.LockPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the home's lock: %w", err)
	}
	held, err := lockFile(f)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", h.LockPath(), err)
	}
	if !held {
		_ = f.Close()
		abs, _ := filepath.Abs(h.Dir)
		if abs == "" {
			abs = h.Dir
		}
		return nil, &HomeInUseError{Dir: abs, Holder: readHolder(h.LockPath())}
	}
	rec, _ := json.Marshal(Holder{PID: os.Getpid(), Command: command(), Node: node, Started: time.Now().UTC().Truncate(time.Second)})
	rec = append(rec, '\n')
	if _, err := f.WriteAt(rec, 0); err != nil || f.Truncate(int64(len(rec))) != nil {
		// The lock is what keeps others out; the record only names the
		// holder. No record is better than another process's.
		_ = f.Truncate(0)
	}
	return &HomeLock{f: f}, nil
}

// Unlock lets the home go (the record stays, for the next holder to write
// over); it may be called more than once, and on nil.
func (l *HomeLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the only descriptor releases the lock
	l.f = nil
	return err
}

// readHolder reads the record of a held lock (nil when there is none yet).
func readHolder(path string) *Holder {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var h Holder
	if json.Unmarshal(b, &h) != nil || h.PID == 0 {
		return nil
	}
	return &h
}

// command names this process as a user would: "ferry run".
func command() string {
	if len(os.Args) == 0 {
		return ""
	}
	cmd := filepath.Base(os.Args[0])
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		cmd += " " + os.Args[1]
	}
	return cmd
}
