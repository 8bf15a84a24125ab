// Package bench measures Ferry against what a user would otherwise pick and
// against the transport it runs on. Everything runs in one process on
// loopback, so every number includes the app, the nodes and the baselines
// sharing the same CPUs.
//
// One command runs every measurement and prints a markdown table:
//
//	FERRY_BENCH=1 go test ./bench/ -run '^TestReport$' -v -count=1 -timeout 30m
//
// It measures, in order:
//
//  1. Ferry throughput: an app pipelines ferry.propagate creates (256-byte
//     payloads, many in flight) at node A; the clock runs from the first send
//     until node B has published every ferry.resource.created event on its
//     NATS. Every reply must be ok and every event must arrive exactly once.
//  2. NATS JetStream sourcing: stream SRC on server A, stream DST on server B
//     sourcing SRC over a leafnode (two JetStream domains); async publishes
//     at A until DST holds every message. Once with the default sync
//     interval and once with sync_interval: always (fsync per write), since
//     Ferry fsyncs before it answers.
//  3. The ceiling: one long-lived libp2p stream (TCP, noise, yamux) between
//     two hosts, varint-framed 256-byte messages, each acked on the stream,
//     many in flight.
//  4. Ferry latency at 1,000 events/s for 5 s: send of the propagate request
//     at A to arrival of the event on B's NATS (p50, p99), and to the
//     fsynced reply at A.
//  5. Fan-out: A with 1 partner and with 10 partners (11 nodes), the same
//     pipelined load, until every partner has published every event.
//
// Knobs (environment):
//
//	FERRY_BENCH=1          run TestReport (otherwise it is skipped)
//	FERRY_BENCH_SCALE=0.5  multiply every event count (default 1)
//	FERRY_BENCH_ONLY=ferry,latency   run only these parts; parts are
//	                       ferry, jetstream, jetstream-sync, libp2p, latency, fanout
//	FERRY_BENCH_INFLIGHT=2048   requests/messages in flight (default 2048)
//
// To see where Ferry's time goes, profile the throughput part alone:
//
//	FERRY_BENCH=1 FERRY_BENCH_ONLY=ferry go test ./bench/ -run '^TestReport$' -v -count=1 -cpuprofile /tmp/ferry.cpu -o /tmp/bench.test
//	go tool pprof -top /tmp/bench.test /tmp/ferry.cpu
//
// Without FERRY_BENCH, go test ./bench/ runs only TestSmoke: every
// measurement at a tiny size (about a second; skipped with -short), to keep
// the harness working.
//
// The scale report of issue 10 (many nodes in one process, real and on a
// mocknet) is TestScale in scale_test.go, run by `make scale`; its knobs
// are described there, and TestScaleSmoke runs it at 4 nodes by default.
//
// Numbers move with the machine: the header prints the load average and
// what one fsync costs in the temp dir, and under the table the store's
// group commits on the sending and the receiving node.
package bench
