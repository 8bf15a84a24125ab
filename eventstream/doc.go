// Package eventstream keeps the events a node publishes to its apps in a
// JetStream stream on the node's NATS, so that an app reading them through a
// durable consumer gets every one once, in order, across its own absences and
// the node's restarts and crashes (SIGKILL included). Core NATS publishing
// (natsbridge.Bridge.Publish from the services' commit hooks) goes on as
// before; this is a second, durable copy.
//
// The stream is driven by the node's change log (the log <prefix>.changes
// serves: local versions in apply order), not by the hooks: a Publisher
// follows the store's durable mark (store.WatchDurable), reads the bodies
// after its cursor (store.LogBodies), asks the service of each change's kind
// for the event it published when it applied it (Renderer: propagate and
// review; Kinds maps the kinds to them), and publishes the events in
// batches. So a crash between a commit and its event reaching the stream
// loses nothing: the next start reads the events again from the log. The
// events of the newest changes are taken from memory instead (Tail: what
// propagate's commit hooks published, by local version): the publisher
// still walks the log record by record, and renders only what the tail
// does not hold.
//
// Exactly once, without relying on JetStream's duplicate window:
//
//   - Every message carries Nats-Msg-Id, the local version of its change
//     (HeaderVersion). The first message after the publisher learned where
//     the stream ends expects the stream's last sequence
//     (Nats-Expected-Last-Sequence); every later one expects the id of the
//     message before it (Nats-Expected-Last-Msg-Id). JetStream stores the
//     messages of one connection in order and refuses one whose expectation
//     does not hold, so after one refusal (a full store, a lost message), or
//     a message of someone else in between, every later one is refused too:
//     the stream never gets a gap or a copy.
//   - Only a batch's last message asks for an answer; its answer names the
//     sequence it got, which must be the one expected: then every message of
//     the batch is stored.
//   - After any failure (a refusal, no answer within AckTimeout, a lost
//     connection) the publisher waits for every answer still owed, then
//     learns the cursor again from the stream itself: the id of its last
//     message. The same happens at start. So a restart resumes exactly where
//     the stream ends. Until an event is stored again they go one at a time,
//     so that an answer names the cause.
//   - Where the stream cannot say (it is new, or its last message expired or
//     was purged), the cursor kept in the store says: the local version
//     through which every event is stored, the stream's last sequence and
//     creation time then, written lazily after answers (at most every
//     second) and once, synchronously, when the node first keeps its events.
//     When it names the stream as it is (same creation, same last sequence)
//     it is taken as it is: it may be past the last event (changes without
//     events).
//
// The ingest subjects are the stream's own, $FERRY.<prefix>.<event subject>,
// and the stream stores each message under the event subject apps already
// know (a subject transform, $FERRY.<prefix>.> to <prefix>.>): a consumer
// filters on <prefix>.resource.created.orders as a core subscriber does, the
// core publishes are not captured (no double store), and a core subscriber
// of <prefix>.> does not see the stream's copies.
//
// Not in the stream: search results (answers to a live query, not in the
// change log), delivery acks and refusals (progress of this node's own
// sends: ferry.delivery.status and .wait), events of own changes taken back
// from peers after a restore, and the changes of a schema-2 store before it
// was migrated (all of these are not in the segment log's order).
//
// Bounds: at most Window batches of at most Batch events (or BatchBytes) are
// in flight; the rest waits in the change log on disk. A commit never waits
// for the stream. When the disk under the JetStream store is below the
// node's free-space reserve, nothing is sent (the cursor stays; Health says
// so) until space returns. A JetStream file store that met a write error
// (ENOSPC) answers nothing again until it is reopened: after an answer that
// did not come, the publisher restarts the embedded server's JetStream
// (Deps.Restart) once the disk has room, at most every RestartEvery.
//
// It must not block a commit, hold more than its window in memory, or
// publish anything the log does not hold durably.
package eventstream
