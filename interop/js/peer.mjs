// A Ferry peer in JavaScript (js-libp2p), written from docs/protocols.md,
// section "Writing a peer", and protocols/pb/ferry.proto alone. It is the
// other side of the interop test in interop/ (interop_test.go):
//
//   - as a partner, it serves /ferry/resource/{create,update,delete}/3.0.0:
//     it checks every batch a Ferry node sends (sender, lane, order, the
//     Merkle walk of each TreeProof, the Ed25519 signature over the root),
//     applies the resource lane in version order and answers each batch
//     with a cumulative Reply;
//   - as an origin, it seals its own resource creates (a Merkle tree per
//     batch, one signature over its root), sends them on
//     /ferry/resource/create/3.0.0 and waits for the Reply that covers them.
//
// It answers hello (/ferry/hello/1.0.0) and runs no identify, no DHT and no
// gossipsub: what it does is the minimum docs/protocols.md asks of a partner
// and an origin.
//
// Use: node peer.mjs '<json config>'; config: {"key": hex of the libp2p
// protobuf private key, "listen": "/ip4/127.0.0.1/tcp/PORT", "ferry":
// "<the Ferry node's multiaddr with /p2p/<id>>", "proto": path of
// ferry.proto}. Commands come on stdin, one JSON object a line:
//   {"cmd": "send", "data_type": "vm", "ids": ["a", "b"], "tamper": ""}
//      seal a create per id in one tree and send them in one batch; tamper
//      "signature" flips a bit of the root signature;
//   {"cmd": "resend_tampered"}: send the last acknowledged batch again,
//      the same bodies and tree, with a bit of its signature flipped.
// Events go to stdout, one JSON object a line: ready, received (a change
// applied from the Ferry node), answered (a Reply to a batch it sent),
// reset (its stream was reset before the answer), error.

import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { byteStream } from 'it-byte-stream'
import { createLibp2p } from 'libp2p'
import protobuf from 'protobufjs'

// Node.js 20 lacks Promise.withResolvers (22 has it), which it-queue (under
// libp2p's peer store, through mortice) calls when a peer disconnects.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const cfg = JSON.parse(process.argv[2] ?? '{}')

// ---- wire constants (docs/protocols.md) ----
const CREATE = '/ferry/resource/create/3.0.0'
const RESOURCE_PROTOCOLS = { [CREATE]: 1, '/ferry/resource/update/3.0.0': 2, '/ferry/resource/delete/3.0.0': 3 }
const LANE_RESOURCE = 1
const MAX_BATCH_FRAME = (1 << 20) + 4096 // limits.max_message_bytes (default) + FrameOverhead
const MAX_REPLY_FRAME = 1 << 20
const ROOT_DOMAIN = new TextEncoder().encode('ferry/envelope-root/1\n')
const MAX_TREE = 1024

const root = await protobuf.load(cfg.proto)
const T = (name) => root.lookupType('ferry.v1.' + name)
const Body = T('Body'); const Envelope = T('Envelope'); const Batch = T('Batch'); const Reply = T('Reply')
const Hello = T('Hello')
const HELLO = '/ferry/hello/1.0.0'
const MAX_HELLO_FRAME = 8192

const out = (ev) => process.stdout.write(JSON.stringify(ev, (_, v) => typeof v === 'bigint' ? v.toString() : v) + '\n')
// uint64 fields decode as Long (protobufjs); numbers and BigInt are used here.
const big = (v) => v == null ? 0n : BigInt(v.toString())

// ---- hashing and signing (docs/protocols.md, "Batch signatures") ----
const sha256 = (...parts) => { const h = createHash('sha256'); for (const p of parts) h.update(p); return new Uint8Array(h.digest()) }
const leafHash = (body) => sha256(Uint8Array.of(0), body)
const nodeHash = (l, r) => sha256(Uint8Array.of(1), l, r)
const splitPoint = (n) => { let k = 1; while (k * 2 < n) k *= 2; return k }
function signedRoot (size, rootHash) {
  const m = new Uint8Array(ROOT_DOMAIN.length + 4 + 32)
  m.set(ROOT_DOMAIN, 0)
  new DataView(m.buffer).setUint32(ROOT_DOMAIN.length, size, false)
  m.set(rootHash, ROOT_DOMAIN.length + 4)
  return m
}
// Root and audit paths of a whole tree (RFC 9162 2.1.1 and 2.1.3.1).
function tree (leaves) {
  if (leaves.length === 1) return { root: leaves[0], paths: [[]] }
  const k = splitPoint(leaves.length)
  const l = tree(leaves.slice(0, k)); const r = tree(leaves.slice(k))
  return {
    root: nodeHash(l.root, r.root),
    paths: [...l.paths.map(p => [...p, r.root]), ...r.paths.map(p => [...p, l.root])]
  }
}
// Root from one leaf and its audit path (RFC 9162 2.1.3.2).
function rootFromPath (leaf, index, size, path) {
  if (index >= size || size > MAX_TREE || path.length > 10) return null
  let fn = index; let sn = size - 1; let r = leaf
  for (const p of path) {
    if (p.length !== 32 || sn === 0) return null
    if ((fn & 1) === 1 || fn === sn) {
      r = nodeHash(p, r)
      if ((fn & 1) === 0) { while ((fn & 1) === 0 && fn !== 0) { fn >>= 1; sn >>= 1 } }
    } else {
      r = nodeHash(r, p)
    }
    fn >>= 1; sn >>= 1
  }
  return sn === 0 ? r : null
}
// Root of a part of a tree: the walk of docs/protocols.md (leaf indices
// strictly increasing; every proof hash used once, in order).
function partRoot (size, idx, leaves, hashes) {
  if (size < 1 || size > MAX_TREE) throw new Error(`tree size ${size}`)
  idx.forEach((x, i) => { if (x >= size || (i > 0 && x <= idx[i - 1])) throw new Error('leaf indices not increasing within the tree') })
  let next = 0; let at = 0
  const walk = (lo, hi) => {
    const from = at; let to = at
    while (to < idx.length && idx[to] < hi) to++
    if (to === from) {
      if (next >= hashes.length || hashes[next].length !== 32) throw new Error('too few proof hashes')
      return hashes[next++]
    }
    if (hi - lo === 1) { at = to; return leaves[from] }
    const k = lo + splitPoint(hi - lo)
    const l = walk(lo, k); const r = walk(k, hi)
    return nodeHash(l, r)
  }
  const r = walk(0, size)
  if (next !== hashes.length) throw new Error('too many proof hashes')
  return r
}

// ---- framing: an unsigned varint length, then one protobuf message ----
async function readFrame (bs, max) {
  let len = 0; let shift = 0
  for (let i = 0; ; i++) {
    const b = await bs.read({ bytes: 1 }).catch((e) => { if (i === 0 && e.name === 'UnexpectedEOFError') return null; throw e })
    if (b == null) return null // clean end of stream
    const byte = b.subarray()[0]
    len += (byte & 0x7f) * 2 ** shift
    if ((byte & 0x80) === 0) break
    shift += 7
    if (shift > 63) throw new Error('bad varint')
  }
  if (len > max) throw new Error(`frame of ${len} bytes over the limit ${max}`)
  if (len === 0) return new Uint8Array(0)
  return (await bs.read({ bytes: len })).subarray()
}
// serialWriter writes frames one after the other (replies are written
// from several places).
function serialWriter (bs, encode) {
  let last = Promise.resolve()
  return (msg) => {
    const f = frame(encode(msg))
    last = last.catch(() => {}).then(() => bs.write(f))
    return last
  }
}
function frame (msg) {
  const body = msg
  const head = []; let n = body.length
  while (n >= 0x80) { head.push((n & 0x7f) | 0x80); n = Math.floor(n / 128) }
  head.push(n)
  const f = new Uint8Array(head.length + body.length)
  f.set(head, 0); f.set(body, head.length)
  return f
}

// ---- the node ----
const key = privateKeyFromProtobuf(Buffer.from(cfg.key, 'hex'))
const self = peerIdFromPrivateKey(key)
const selfBytes = self.toMultihash().bytes
const ferryAddr = multiaddr(cfg.ferry)
const ferryId = peerIdFromString(ferryAddr.getPeerId())
const ferryKey = ferryId.publicKey // Ed25519 ids embed their key

const node = await createLibp2p({
  privateKey: key,
  addresses: { listen: [cfg.listen] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {} // no identify, no ping, no DHT, no gossipsub
})

// ---- partner: receive the Ferry node's resource lane ----
// The lane's position: every entry up to `through` of sender epoch `epoch`
// is applied here. Batches whose `after` is beyond it wait (the lane spans
// the create, update and delete streams).
const lane = { epoch: 0n, through: 0n, waiting: new Map() }
const resources = new Map()

function checkBatch (b, sender, protocol) {
  if (b.lane !== LANE_RESOURCE) throw new Error(`lane ${b.lane}: this peer takes the resource lane only`)
  if (b.envelopes.length === 0) throw new Error('empty batch')
  // Open every envelope: self-contained ones alone, compact ones by tree.
  const opened = new Array(b.envelopes.length)
  const parts = b.trees.map(() => ({ idx: [], leaves: [], at: [] }))
  b.envelopes.forEach((e, j) => {
    if (!e.body || e.body.length === 0) throw new Error('empty body')
    const leaf = leafHash(e.body)
    if (e.tree === 0) {
      const r = rootFromPath(leaf, e.leafIndex, e.treeSize, e.path)
      if (!r) throw new Error('bad audit path')
      opened[j] = { leaf, root: r, size: e.treeSize, sig: e.rootSignature }
      return
    }
    if (e.tree > b.trees.length) throw new Error(`envelope names tree ${e.tree} of ${b.trees.length}`)
    if (e.treeSize || e.path.length || (e.rootSignature && e.rootSignature.length)) throw new Error('compact envelope with fields 3-5')
    const p = parts[e.tree - 1]
    p.idx.push(e.leafIndex); p.leaves.push(leaf); p.at.push(j)
  })
  const checks = []
  parts.forEach((p, i) => {
    if (p.idx.length === 0) throw new Error(`tree proof ${i + 1}: no envelope names it`)
    const tp = b.trees[i]
    const r = partRoot(tp.treeSize, p.idx, p.leaves, tp.hashes)
    checks.push({ size: tp.treeSize, root: r, sig: tp.rootSignature })
  })
  for (const o of opened) if (o) checks.push({ size: o.size, root: o.root, sig: o.sig })
  // One signature check per tree; no cache, so every signature is checked.
  for (const c of checks) {
    if (!ferryKey.verify(signedRoot(c.size, c.root), c.sig)) throw new Error('signature does not verify')
  }
  // Every body: signed by the sender (origin = sender), of the lane's
  // kinds and this protocol's, versions increasing after `after`, not
  // addressed to another peer.
  let prev = big(b.after)
  return b.envelopes.map((e) => {
    const body = Body.decode(e.body)
    if (!Buffer.from(body.origin).equals(Buffer.from(sender.toMultihash().bytes))) throw new Error('change not signed by the sender')
    if (body.kind !== RESOURCE_PROTOCOLS[protocol]) throw new Error(`kind ${body.kind} on ${protocol}`)
    const v = big(body.originVersion)
    if (v <= prev) throw new Error(`version ${v} out of order (after ${prev})`)
    prev = v
    if (body.to && body.to.length && !Buffer.from(body.to).equals(Buffer.from(selfBytes))) throw new Error('addressed to another peer')
    return body
  })
}

// apply takes a batch whose `after` the lane holds: each entry after the
// position is applied or refused for good (by version, in the Reply).
function apply (b, bodies) {
  const refused = []
  for (const body of bodies) {
    const v = big(body.originVersion)
    if (v <= lane.through) continue // held already
    let doc
    try { doc = JSON.parse(new TextDecoder().decode(body.payload)) } catch { doc = null }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc) || doc.id == null) {
      refused.push({ version: body.originVersion, reason: 'payload is not a resource' })
      continue
    }
    if (doc.creator_id !== ferryId.toString()) {
      refused.push({ version: body.originVersion, reason: 'creator_id is not its origin' })
      continue
    }
    resources.set(`${body.dataType}/${doc.id}`, doc)
    out({ event: 'received', kind: body.kind, data_type: body.dataType, id: String(doc.id), version: v, after: big(b.after) })
  }
  lane.through = big(bodies.at(-1).originVersion)
  return refused
}

function serveBatch (b, bodies, answer) {
  const epoch = big(b.epoch)
  if (epoch !== lane.epoch) { // a new incarnation of the sender: the lane starts over
    lane.epoch = epoch; lane.through = 0n; lane.waiting.clear()
  }
  const through = big(bodies.at(-1).originVersion)
  if (through <= lane.through) { answer({ lane: LANE_RESOURCE, epoch: b.epoch, through: lane.through.toString() }); return }
  if (big(b.after) > lane.through) { lane.waiting.set(big(b.after), { b, bodies, answer }); return }
  const refused = apply(b, bodies)
  answer({ lane: LANE_RESOURCE, epoch: b.epoch, through: lane.through.toString(), refused })
  // Batches that waited for this one.
  for (;;) {
    const next = [...lane.waiting.entries()].find(([after]) => after <= lane.through)
    if (!next) break
    lane.waiting.delete(next[0])
    serveBatch(next[1].b, next[1].bodies, next[1].answer)
  }
}

for (const protocol of Object.keys(RESOURCE_PROTOCOLS)) {
  await node.handle(protocol, async ({ stream, connection }) => {
    const sender = connection.remotePeer
    const bs = byteStream(stream)
    const write = serialWriter(bs, (msg) => Reply.encode(Reply.fromObject(msg)).finish())
    try {
      if (!sender.equals(ferryId)) throw new Error(`${sender} is not a partner`)
      // A position report for the lane it takes (optional: the sender does
      // not wait for it; a report must be true, or the sender resends).
      await write({ lane: LANE_RESOURCE, epoch: lane.epoch.toString(), through: lane.through.toString(), report: true })
      for (;;) {
        const f = await readFrame(bs, MAX_BATCH_FRAME)
        if (f == null) break
        const b = Batch.decode(f)
        const bodies = checkBatch(b, sender, protocol)
        serveBatch(b, bodies, (r) => { write(r).catch(() => {}) })
      }
      await stream.close()
    } catch (err) {
      out({ event: 'error', where: 'receive', protocol, error: String(err.message ?? err) })
      stream.abort(err) // reset: the sender goes back to its floor and resends
    }
  }, { maxInboundStreams: 8 })
}

// ---- hello: say the network and how far it holds the Ferry node's changes ----
// The Ferry node greets on the connections it dials (and, in its discovery
// rounds, on any without a hello yet): it writes its Hello, this side answers
// with its own. holds_version tells it how far this peer holds its changes:
// a Ferry node whose partners acknowledged its changes takes its apps'
// writes after a restart only once a partner has said that in hello.
await node.handle(HELLO, async ({ stream, connection }) => {
  const bs = byteStream(stream)
  try {
    const f = await readFrame(bs, MAX_HELLO_FRAME)
    if (f == null) throw new Error('no hello')
    const theirs = Hello.decode(f)
    const holds = connection.remotePeer.equals(ferryId) && big(lane.epoch) !== 0n ? lane.through : 0n
    const mine = Hello.encode(Hello.fromObject({
      network: cfg.network ?? 'ferry', // must be the Ferry node's network: another one is disconnected for good
      name: 'js',
      version: 'interop-js',
      addrs: node.getMultiaddrs().map((a) => a.decapsulateCode(421).bytes), // listen addresses, without /p2p
      holdsVersion: holds.toString()
    })).finish()
    await bs.write(frame(mine))
    out({ event: 'hello', from: connection.remotePeer.toString(), network: theirs.network, holds })
    await stream.close()
  } catch (err) {
    out({ event: 'error', where: 'hello', error: String(err?.message ?? err) })
    stream.abort(err)
  }
})

// ---- origin: seal and send its own resource creates ----
let version = 0n // the last origin version given (microseconds, never reused)
const nextVersion = () => { const now = BigInt(Date.now()) * 1000n; version = now > version ? now : version + 1n; return version }
const epoch = BigInt.asUintN(64, BigInt(Math.floor(Math.random() * 2 ** 52)) << 12n | 1n) // random, non-zero, fixed for this store
let acked = 0n // Ferry's position in our resource lane
let chainHead = 0n // origin version of our last resource change Ferry holds
let lastBatch = null
let conn = null // { bs, waiters }

async function outStream () {
  if (conn) return conn
  const stream = await node.dialProtocol(ferryAddr, CREATE)
  const bs = byteStream(stream)
  const c = { stream, bs, waiters: [] }
  conn = c;
  (async () => {
    let err = null
    try {
      for (;;) {
        const f = await readFrame(bs, MAX_REPLY_FRAME)
        if (f == null) break
        const r = Reply.decode(f)
        if (r.lane !== LANE_RESOURCE) continue
        const through = big(r.epoch) === epoch ? big(r.through) : 0n
        if (r.report) { acked = through; continue }
        if (through > acked) acked = through
        c.waiters = c.waiters.filter((w) => {
          if (through < w.through) return true
          w.resolve({ through, refused: r.refused.map((x) => ({ version: big(x.version), reason: x.reason })) })
          return false
        })
      }
    } catch (e) { err = e }
    if (conn === c) conn = null
    for (const w of c.waiters) w.reject(err ?? new Error('stream closed'))
  })()
  return c
}

async function send ({ data_type: dataType = 'vm', ids = [], tamper = '' }) {
  const bodies = ids.map((id) => {
    const v = nextVersion()
    const doc = { id, creator_id: self.toString(), from: 'js' } // creator_id: the origin's base58 peer id
    const body = Body.encode(Body.fromObject({
      origin: selfBytes,
      originVersion: v.toString(),
      kind: 1, // KIND_RESOURCE_CREATE
      dataType,
      payload: new TextEncoder().encode(JSON.stringify(doc)),
      createdAtUnixNano: (BigInt(Date.now()) * 1000000n).toString(),
      prevVersion: chainHead.toString()
    })).finish()
    chainHead = v
    return { v, body }
  })
  // One tree over the batch, one signature over its root; self-contained
  // envelopes (leaf index, tree size, audit path, signature).
  const { root: r, paths } = tree(bodies.map((x) => leafHash(x.body)))
  const sig = await key.sign(signedRoot(bodies.length, r))
  if (tamper === 'signature') sig[7] ^= 0x01
  const envelopes = bodies.map((x, i) => ({ body: x.body, leafIndex: i, treeSize: bodies.length, path: paths[i], rootSignature: sig }))
  const batch = { epoch: epoch.toString(), lane: LANE_RESOURCE, after: acked.toString(), envelopes }
  const through = bodies.at(-1).v
  const res = await sendBatch(batch, through)
  if (res.ok && tamper === '') lastBatch = { batch, through }
  if (!res.ok) chainHead = acked // nothing of it is held there
  return res
}

async function sendBatch (batch, through) {
  const c = await outStream()
  const answered = new Promise((resolve, reject) => c.waiters.push({ through, resolve, reject }))
  await c.bs.write(frame(Batch.encode(Batch.fromObject(batch)).finish()))
  try {
    const a = await answered
    out({ event: 'answered', through: a.through, refused: a.refused })
    return { ok: true }
  } catch (err) {
    out({ event: 'reset', through, error: String(err?.message ?? err) })
    return { ok: false }
  }
}

async function resendTampered () {
  if (!lastBatch) throw new Error('no batch was acknowledged yet')
  const b = structuredClone(lastBatch.batch)
  const sig = Uint8Array.from(b.envelopes[0].rootSignature)
  sig[7] ^= 0x01
  for (const e of b.envelopes) e.rootSignature = sig
  return sendBatch(b, lastBatch.through)
}

const lines = createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  try {
    const c = JSON.parse(line)
    if (c.cmd === 'send') await send(c)
    else if (c.cmd === 'resend_tampered') await resendTampered()
    else throw new Error(`unknown command ${c.cmd}`)
  } catch (err) {
    out({ event: 'error', where: 'command', error: String(err?.message ?? err) })
  }
})
lines.on('close', async () => { await node.stop(); process.exit(0) })

out({ event: 'ready', peer_id: self.toString(), addrs: node.getMultiaddrs().map(String) })
