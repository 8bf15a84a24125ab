//go:build !linux

package store

// lockHolder cannot tell here who holds the store's lock.
func lockHolder(string) int { return 0 }
