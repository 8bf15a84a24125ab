// Package bench measures Ferry against what a user would otherwise pick and
// against the transport it runs on. Ferry's nodes run as separate `ferry run`
// processes (the binary is built once per test run), so each node's CPU is
// its own process's (/proc/<pid>/stat); the app, the NATS JetStream
// baselines and the raw libp2p hosts run in the test process. Everything is
// on loopback and shares the machine's CPUs.
//
// One command runs every measurement and prints a markdown table
// (`make bench`):
//
//	FERRY_BENCH=1 go test ./bench/ -run '^TestReport$' -v -count=1 -timeout 30m
//
// Its parts, in order (FERRY_BENCH_ONLY names them):
//
//   - ferry: an app pipelines ferry.propagate creates (256-byte payloads,
//     2,048 in flight) at process A; the clock runs from the first send until
//     process B has published every ferry.resource.created event on its NATS.
//     Every reply must be ok and every event arrive exactly once. CPU per
//     event of A, B and the app. Rows 1b-1e are issue 18's measures of
//     this run: its rate over jsasync's (1b); the CPU per event of the
//     origin A and the receiver B (1c); bytes on disk per change: after the
//     checks A and B are stopped cleanly (SIGTERM, their exit) and the
//     sizes of the files under each one's data directory (<home>/data) are
//     summed and divided by the events, split into <data>/changes/ (the
//     segment log, "absent" before it exists), <data>/jetstream/ (the events
//     stream's JetStream store, on by default) and the rest (1d; issue 18's
//     target is judged on the store's part, the stream's shown beside it);
//     and the
//     send-at-A to event-on-B latency at saturation, p50, p99 and p99/p50,
//     of every 100th event at full size (1e). At scale 1 or more, a run
//     of this part or the next that ends under 10 s runs again with
//     enough events for about 12 s (issue 18's rule: every Ferry
//     throughput run at least 200,000 events and 10 s), and that run is
//     the one reported.
//   - ferry-noevents: part 1 again with every node's JetStream events stream
//     off (nats.events.enabled: false, FERRY_BENCH_EVENTS=off): row 1f, and
//     beside the receiver's CPU in the targets, what the stream costs. The
//     targets are judged on part 1, as users run it.
//   - fanout: the same with A and 5 partner processes, until every partner
//     published every event; A's CPU per event against the 1-partner run.
//   - jetstream, jetstream-sync: NATS JetStream sourcing, stream SRC on
//     server A and DST on server B sourcing SRC over a leafnode; async
//     publishes at A until DST holds every message; once with the default
//     sync interval, once with sync_interval: always (fsync per write, as
//     Ferry fsyncs before it answers).
//   - jsasync: JetStream async publish into one file-backed stream (one
//     server), until every publish is acknowledged.
//   - libp2p: the ceiling, one long-lived libp2p stream (TCP, noise, yamux),
//     varint-framed 256-byte messages, each acked on the stream.
//   - latency: paced sends at 1,000 and 10,000 events/s for 5 s: send at A to
//     the event on B's NATS (p50, p99, max) and to the fsynced reply at A.
//   - catchup: A takes 100,000 creates while its partner B is stopped; the
//     clock runs from B's process start until B holds them all: B's count
//     of changes applied (ferry_delivery_received_total, looked at every
//     10 ms near the end, more rarely before) covers them, and then A owes B nothing. Its checks give when
//     B's first change was applied and the CPU A and B used in that time.
//   - join: a reviewer with 1,000,000 decided rows and 100,000 resources of
//     its own; a new member (a partner of it) starts with an empty store; the
//     clock runs from its process start until it applied every decision and
//     holds every resource (snapshot, then the decisions after it).
//
// After the table, a second one, "Issue 18 targets": each measure of the
// issue, this run's figure, the must-reach target and whether it is met,
// and whether parts 1 and 2 meet the rule.
//
// Knobs (environment):
//
//	FERRY_BENCH=1                run TestReport (otherwise it is skipped)
//	FERRY_BENCH_SCALE=0.5        multiply every event count (default 1)
//	FERRY_BENCH_ONLY=ferry,latency   run only these parts
//	FERRY_BENCH_INFLIGHT=2048    requests/messages in flight
//	FERRY_BENCH_PROFILES=DIR     each ferry process writes DIR/<name>.cpu (part 1:
//	                             A.cpu, B1.cpu; other parts <part>-<name>.cpu)
//	FERRY_BENCH_LOG=info         the processes' log level (default warn); the
//	                             catchup part then prints B's and A's logs and
//	                             what B applied over time
//	FERRY_BENCH_CATCHUP_RESTART=1   catchup: A restarts after the creates, so
//	                             its profile (catchup-A.cpu) holds the
//	                             catch-up alone
//	FERRY_BENCH_METRICS=1        log each process's ferry_store_* metrics
//	FERRY_BENCH_EVENTS=off       run the nodes without the JetStream events
//	                             stream (nats.events.enabled: false); by
//	                             default it is on, as users run it: every
//	                             partner keeps each event it publishes in it
//
// Single measurements: TestProcsQuick (FERRY_BENCH_PROCS=<events>,
// FERRY_BENCH_PARTNERS=<n>), TestProcsLatencyQuick (FERRY_BENCH_RATE=<events/s>).
// The soak (`make soak`) is TestSoak (FERRY_SOAK_MINUTES, FERRY_SOAK_RATE);
// it also prints A's and B's CPU per change against a full-rate figure,
// FERRY_SOAK_FULLRATE_US=<A µs>[,<B µs>] or measured before the soak as
// part 1 with FERRY_SOAK_FULLRATE_EVENTS creates (default 400,000; 0: none).
//
// Without FERRY_BENCH, go test ./bench/ runs only TestSmoke: every
// measurement at a tiny size (skipped with -short), to keep the harness
// working.
//
// The scale report of issue 10 (many nodes in one process, real and on a
// mocknet) is TestScale in scale_test.go, run by `make scale`; its knobs
// are described there, and TestScaleSmoke runs it at 4 nodes by default.
//
// Numbers move with the machine: the header prints the load average and
// what one fsync costs in the temp dir.
package bench
