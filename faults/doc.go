// Package faults is Ferry's process-level fault suite: it runs real `ferry
// run` processes (internal/proc) and attacks them the way issue 11 did:
//
//   - disk: a node's home on a small ext4 image (a tmpfs with a size limit
//     where loop devices are missing) that fills up and is freed again, by
//     the node's own writes and by another process, in cycles: no request
//     hangs, /healthz says 503 with the reason within seconds, the node
//     either refuses writes (disk almost full) and resumes once space is
//     freed, or exits non-zero with one line and restarts; nothing
//     acknowledged is lost;
//   - disk without a reserve (limits.min_free_disk_mb: 0): 20 cycles of
//     filling a 96 MiB ext4 image to the last byte while an app writes, the
//     node exiting on ENOSPC or SIGKILLed or SIGTERMed, and started again:
//     every start once space exists succeeds and takes writes; a start on
//     the still-full disk waits (/healthz 503: what it needs, what is free),
//     starts once space is freed and stops on SIGTERM; every acknowledged
//     create is held at the end;
//   - pages: ferry.changes read page by page over changes that do not fit
//     one NATS message: every reply within the server's max payload, every
//     change once, in order;
//   - SIGTERM under load: every request the node took is answered, the node
//     exits 0 within its bound, and every acknowledged create reaches the
//     partner;
//   - SIGKILL under full-rate load: the receiver, then the origin, killed and
//     restarted at random points (3 times under 20,000 creates; 10 times
//     under 200,000 with make faults): every create a reply said ok for is
//     held by both, once, at the version answered, in the origin's order,
//     and both stores hold the same;
//   - retries across a crash: creates with idempotency keys, the node
//     SIGKILLed mid-burst and restarted, every key retried: the first answer
//     or a fresh one, never conflict, and each resource written once;
//   - the change log (log_test.go, issue 18): SIGKILLs under load, one the
//     moment a new segment appears, with garbage or half a record appended
//     to the last segment: the tail is cut at start, nothing acknowledged is
//     lost or written twice; a bit flipped in a sealed segment: `corrupt`
//     while running, /healthz 503, never served, and a start refused with
//     the file and offset; a missing segment refused by name; a home of the
//     previous release (built from git history) upgraded in place with every
//     change, floor and row;
//   - a corrupt Pebble file (corrupt_test.go): `corrupt` with the file, a
//     rebuild at the next start, the rows it lost taken back from a partner;
//   - apps' delivery status (delivery_test.go, issue 20): a wait completes on
//     the partner's acknowledgement; with the partner SIGKILLed a wait
//     answers not complete at its timeout and the status shows pending with
//     the attempts; once it is back the waits complete; 10,000 open waits
//     cost the node no CPU while nothing moves (measured from /proc and
//     logged), and one floor move answers them all.
//   - a partition of the review group (partition_test.go, issue 19): five
//     nodes in network namespaces of their own (root and `ip netns` needed,
//     else it skips), the leader's links to the other two reviewers cut by
//     blackhole routes: the old leader answers unavailable and decides
//     nothing, the majority decides, one history after the heal.
//
// The tests are short by default (they run in `make test` and CI); with
// FERRY_FAULTS=long (`make faults`) they run many more cycles and events
// and log their figures. The disk test needs root to mount a file system;
// elsewhere it skips, saying so.
//
// The package holds tests only.
package faults
