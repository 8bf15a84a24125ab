// Package interop checks that a peer written in another language, from
// docs/protocols.md ("Writing a peer") and protocols/pb/ferry.proto alone,
// is a Ferry partner and origin: a js-libp2p program (interop/js/peer.mjs,
// its npm packages pinned by interop/js/package-lock.json and installed by
// scripts/interop.sh) beside a real `ferry run` process (internal/proc), on
// 127.0.0.1. The test skips, saying why, where Node.js 20 or npm is missing.
//
// The package holds tests only.
package interop
