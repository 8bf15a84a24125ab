package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/cockroachdb/pebble"

	"github.com/ferrynet/ferry"
)

// A corrupt store: a block of an sst file that fails its checksum (a disk
// that flipped bits, a file written over). Pebble reports it as
// pebble.ErrCorruption on the read that met the block, every time, so
// asking again never helps. The store turns it into:
//
//   - an error wrapping ferry.ErrCorrupt (code `corrupt`, not
//     `unavailable`: apps must not retry it), from every read path;
//   - one ERROR line per damaged file, naming it;
//   - Health not OK with the reason (the node's /healthz is 503), the store
//     still taking writes (they go to new files);
//   - a mark in the data directory (corruptMark) so that the next Open
//     rebuilds the store from what is readable (repair.go), and the node
//     then takes the lost range back from its partners.
//
// Pebble's background errors (a compaction that reads the damaged block)
// are checked the same way (health.backgroundError).

// corruptMark is the file in the data directory that asks the next Open to
// rebuild the store; it holds the first corruption's reason.
const corruptMark = "FERRY-CORRUPT"

// tableRe finds the file number in Pebble's corruption errors
// ("pebble/table: invalid table 000010 (checksum mismatch at 7193852/32608)").
var tableRe = regexp.MustCompile(`table (\d+)`)

// corruptFile names the sst file a corruption error is about ("" if the
// error names none).
func corruptFile(dir string, err error) string {
	m := tableRe.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	return filepath.Join(dir, m[1]+".sst")
}

// corrupt records a corruption (once per file, the first one for Health)
// and writes the rebuild mark.
func (h *health) corrupt(err error) {
	file := corruptFile(h.dir, err)
	h.mu.Lock()
	if h.corruptFiles == nil {
		h.corruptFiles = map[string]bool{}
	}
	seen := h.corruptFiles[file]
	h.corruptFiles[file] = true
	h.mu.Unlock()
	if seen {
		return
	}
	where := file
	if where == "" {
		where = h.dir
	}
	reason := fmt.Sprintf("store corrupt: %s in %s; restart the node to rebuild the store from what is readable and take the lost range back from partners", err.Error(), where)
	if h.corruptReason.CompareAndSwap(nil, &reason) {
		h.poke()
	}
	h.log.Error("store corrupt: a block failed its checksum; reads of that range answer `corrupt` until the store is rebuilt (restart the node)",
		"file", where, "err", err.Error())
	if h.o.FS == nil { // a store on the disk (not in memory, not under a test's file system)
		if werr := writeFileAtomic(filepath.Join(h.dir, corruptMark), []byte(reason+"\n")); werr != nil {
			h.log.Error("store corrupt: could not mark the data directory for a rebuild at the next start", "err", werr.Error())
		}
	}
}

// check turns a read error that is a corruption into one wrapping
// ferry.ErrCorrupt, and records it. Other errors pass unchanged.
func (s *Store) check(err error) error {
	if err == nil || !pebble.IsCorruptionError(err) || errors.Is(err, ferry.ErrCorrupt) {
		return err
	}
	s.h.corrupt(err)
	file := corruptFile(s.h.dir, err)
	if file == "" {
		return fmt.Errorf("%w: %w", ferry.ErrCorrupt, err)
	}
	return fmt.Errorf("%w: %s: %w", ferry.ErrCorrupt, filepath.Base(file), err)
}

// writeFileAtomic writes a small file through a temporary one and a
// rename, so a crash leaves the old file or the new one.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
