package eventstream

import "sync"

// DefaultTailEvents bounds the events a Tail keeps: a few windows of
// batches (DefaultWindow × DefaultBatch is 2,048), about 3 MB of 300-byte
// events. A publisher further behind reads the rest from the change log.
const DefaultTailEvents = 8192

// Tail keeps the events the services published for their newest changes,
// as their commit hooks published them, so that the publisher need not read
// those changes back from the log and render them again (Renderer). It is
// only a shortcut: the publisher still walks the log record by record and
// takes an event from the tail only for the version it is at; a change whose
// event is not there (the tail was full, the hook has not run, a service
// that does not feed it, a restart) is read and rendered as before. Commit
// hooks run in commit order, so versions arrive rising; the tail is a FIFO
// that drops its oldest event when full.
type Tail struct {
	mu   sync.Mutex
	max  int
	buf  []tailEvent // ring: n events from head
	head int
	n    int
}

type tailEvent struct {
	ver    uint64
	suffix string // "": the change has no event (None)
	data   []byte
}

// NewTail makes a tail of at most max events (DefaultTailEvents when max <= 0).
func NewTail(max int) *Tail {
	if max <= 0 {
		max = DefaultTailEvents
	}
	return &Tail{max: max}
}

// Add keeps the event published for the change at local version ver (the
// subject suffix under the node's prefix and the body, which the caller
// must not change afterwards; no suffix: no event, nothing kept). A
// version not above the newest kept is
// ignored (the order would not hold).
func (t *Tail) Add(ver uint64, suffix string, data []byte) {
	if t == nil || suffix == "" {
		return
	}
	t.add(tailEvent{ver: ver, suffix: suffix, data: data})
}

// None records that the change at local version ver has no event (an
// origin's own resource change): the publisher passes over its record in
// the log without reading it.
func (t *Tail) None(ver uint64) {
	if t != nil {
		t.add(tailEvent{ver: ver})
	}
}

func (t *Tail) add(e tailEvent) {
	ver := e.ver
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n > 0 && t.buf[(t.head+t.n-1)%len(t.buf)].ver >= ver {
		return
	}
	if len(t.buf) < t.max && t.n == len(t.buf) {
		t.grow()
	}
	if t.n == len(t.buf) { // full: the oldest goes
		t.buf[t.head] = tailEvent{}
		t.head = (t.head + 1) % len(t.buf)
		t.n--
	}
	t.buf[(t.head+t.n)%len(t.buf)] = e
	t.n++
}

// grow doubles the ring (up to max), keeping the order. Lock held.
func (t *Tail) grow() {
	size := min(max(2*len(t.buf), 64), t.max)
	nb := make([]tailEvent, size)
	for i := range t.n {
		nb[i] = t.buf[(t.head+i)%len(t.buf)]
	}
	t.buf, t.head = nb, 0
}

// take gives the event kept for version ver, if any, dropping it and every
// older one (the publisher reads versions in rising order; those it passed
// over were read from the log).
func (t *Tail) take(ver uint64) (tailEvent, bool) {
	if t == nil {
		return tailEvent{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.n > 0 {
		e := t.buf[t.head]
		if e.ver > ver {
			return tailEvent{}, false
		}
		t.buf[t.head] = tailEvent{}
		t.head = (t.head + 1) % len(t.buf)
		t.n--
		if e.ver == ver {
			return e, true
		}
	}
	return tailEvent{}, false
}
