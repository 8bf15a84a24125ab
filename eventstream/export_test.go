package eventstream

// TakeForTest takes the event kept for ver (Tail.take).
func TakeForTest(t *Tail, ver uint64) ([]byte, bool) {
	e, ok := t.take(ver)
	return e.data, ok
}
