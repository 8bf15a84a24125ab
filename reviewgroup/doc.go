// Package reviewgroup is the review group's consensus layer: the reviewers of
// a network (SPEC.md "The review group", `reviewers: [R1, R2, R3]`) keep one
// replicated log with hashicorp/raft, carried over the node's libp2p host.
// A Group is one member's part of it:
//
//   - the transport: raft's NetworkTransport over libp2p streams on
//     /ferry/review-raft/1.0.0 (transport.go), the raft server address being
//     the member's peer id; only peers the caller allows (the members of the
//     group) may open a stream, every other one is reset at open;
//   - durable state in a directory the caller gives (the node's
//     <home>/data/raft/): raft-boltdb for the log and the stable store
//     (raft.db, fsynced on every write), raft's file snapshot store (two
//     snapshots kept);
//   - Apply on the leader, or forwarded to the leader over
//     /ferry/review-forward/1.0.0 (forward.go); a member that cannot reach a
//     leader answers ferry.ErrUnavailable naming the group and who it can
//     reach;
//   - membership changes (AddVoter, RemoveServer), Barrier, the members'
//     status (Servers) and Prometheus metrics.
//
// The state machine is the caller's raft.FSM: the package knows nothing of
// reviews, requests or decisions, and must not. It does not decide who the
// members are either (the caller's Allowed and Bootstrap do), and it never
// writes outside its directory.
//
// # Contract for the state machine
//
// The FSM sees each committed command once per start, in log order, on
// every member; after a restart raft replays the log after the last
// snapshot, so a state machine that keeps its state on disk remembers the
// last index it applied and skips entries at or below it. Its Apply returns
// nil, a []byte or an error (any other value becomes an error): that result
// crosses the wire to a follower whose command was forwarded, an error as
// its Ferry error code and message (ferry.Code), so errors.Is works on both
// sides for Ferry's sentinel errors.
//
// A command whose Apply failed with ferry.ErrUnavailable may or may not have
// been committed (the leader lost its leadership, the answer was lost): the
// caller retries it, and the command carries an id the state machine
// deduplicates by (it keeps the result of each id it applied and answers a
// repeat with it), so a retry never applies anything twice. The tests'
// recorder FSM (helpers_test.go) shows the pattern.
//
// # Fencing
//
// An entry commits only once a majority of voters hold it on disk, and the
// FSM applies committed entries only. A leader cut off from the majority
// cannot commit: it keeps its leadership at most LeaderLeaseTimeout after
// it last heard from a quorum (raft's leader lease), then steps down, and
// every Apply waiting on it ends with raft.ErrLeadershipLost, which Apply
// answers as ferry.ErrUnavailable. Its FSM never saw the uncommitted
// entries; when the link heals, the new leader's log replaces its
// uncommitted tail. Reads that must not be stale call Barrier first.
package reviewgroup
