package store

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// lockHolder is the pid of the process that holds Pebble's lock of dir
// (an fcntl lock of dir/LOCK), or 0 when none does or it cannot tell.
func lockHolder(dir string) int {
	f, err := os.Open(filepath.Join(dir, "LOCK"))
	if err != nil {
		return 0
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk) != nil || lk.Type == syscall.F_UNLCK {
		return 0
	}
	return int(lk.Pid)
}
