//go:build unix

package node

import (
	"errors"
	"os"
	"syscall"
)

// lockFile takes an exclusive flock of f without waiting: held is false
// when another open file (another process, or another Lock in this one)
// holds it.
func lockFile(f *os.File) (held bool, err error) {
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}
