package store

import (
	"encoding/binary"
	"errors"
)

// Key layout (schema 3). The change log itself is not in Pebble: it is the
// segment files of <dir>/changes (changelog.go). Every table has its own prefix; numeric parts are
// big-endian so range scans come out in numeric order; variable parts (peer
// ids, names) are length-prefixed so no key is a prefix of another table's
// key.
//
//	m/schema                          schema version
//	m/epoch                           this store's incarnation (random, set once)
//	m/ctr/<name>                      counters: version, request, decision, ...
//	m/logend, m/logseg                the last version of the change log recorded durable, and its segment
//	c/<version>                       a change's sealed envelope, for changes of a schema-2 store and own
//	                                  changes taken back from peers (out of the log's order); the rest is
//	                                  in the log
//	o/<origin>/<origin version>       another origin's change held here (and own changes of c/): local
//	                                  version, kind, body hash, time applied; an own change's is its log record
//	D/<version>                       own deliveries: this node's changes that go to receivers (lane, kind,
//	                                  protocol, request id, addressees); the outbox is the log
//	U/<version>                       an own resource change a later change of the same resource superseded
//	                                  (retention may drop its delivery record; the latest one stays)
//	A/<receiver>/<lane>/<version>     own deliveries addressed to one receiver (considers, planner, review
//	                                  requests, rejections); broadcast lanes are read from D/
//	F/<receiver>/<lane>               ack floor: the receiver acknowledged the lane through this version
//	J/<receiver>/<version>            an own delivery the receiver refused for good, with the reason
//	P/<sender>/<lane>                 position: this node applied the sender's lane through that version
//	r/<data type>/<creator>/<id>      current resource
//	q/<id>                            review request row
//	qo/<origin>                       request id by origin
//	s/<sequence>                      local version of the decision with that sequence
//	t/<table>/<row id>                table row
//	p/<peer id>                       peer book
//	pp/<peer id>                      partner added (1) or removed (0) by an operator
//	x/...                             free for services (see Txn.SetAux)
//
// Schema 1 also had d/ (delivery rows), dp/ (pending index), dl/ (outbound
// link seqs) and l/ (inbound link state); the migration to schema 2 turns
// them into D/, A/, F/ and P/ and deletes them.
const (
	pMeta        = "m/"
	pChange      = "c/"
	pOrigin      = "o/"
	pOwn         = "D/"
	pSuperseded  = "U/"
	pAddressed   = "A/"
	pFloor       = "F/"
	pRefused     = "J/"
	pPosition    = "P/"
	pResource    = "r/"
	pRequest     = "q/"
	pReqOrigin   = "qo/"
	pDecision    = "s/"
	pTable       = "t/"
	pPeer        = "p/"
	pPartner     = "pp/"
	pAux         = "x/"
	keySchema    = "m/schema"
	keyEpoch     = "m/epoch"
	keyCtrPrefix = "m/ctr/"

	// schema 1 only (read by the migration)
	pDeliveryV1 = "d/"
	pPendingV1  = "dp/"
	pLinkOutV1  = "dl/"
	pLinkInV1   = "l/"
)

// Counter names.
const (
	CtrVersion  = "version"
	CtrRequest  = "request"
	CtrDecision = "decision"
)

type key []byte

func k(prefix string) key { return append(make(key, 0, 64), prefix...) }

func (b key) u64(v uint64) key { return binary.BigEndian.AppendUint64(b, v) }

func (b key) u8(v byte) key { return append(b, v) }

// str appends a length-prefixed string (at most 255 bytes are kept distinct,
// longer parts are refused by callers before they get here).
func (b key) str(s string) key {
	if len(s) > 255 {
		s = s[:255]
	}
	return append(append(b, byte(len(s))), s...)
}

func (b key) bytes(p []byte) key { return b.str(string(p)) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

var errShortKey = errors.New("short key")

func tailU64(b []byte) (uint64, error) {
	if len(b) < 8 {
		return 0, errShortKey
	}
	return binary.BigEndian.Uint64(b[len(b)-8:]), nil
}

func u64Value(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func parseU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
