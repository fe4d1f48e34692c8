// js-libp2p interop peer for tests/test_interop_js.py (see ../README.md).
//
//   node peer.mjs <multiaddr/p2p/id> <protocol id> <topic> [options]
//
// Starts a js-libp2p node (TCP + Noise + Yamux + identify + GossipSub) on /ip4/127.0.0.1/tcp/0,
// dials <multiaddr>, and checks, against that peer:
//   identify  the peer's identify response parses and lists <protocol id>
//   echo      a stream on <protocol id> carries unsigned-varint length-prefixed frames there
//             and back (a short frame, then a large one that needs Yamux window updates and
//             several Noise frames)
//   mesh      the peer is in our GossipSub mesh for <topic>; we then publish once
//   message   a gossip message on <topic> from that peer arrives
// It also serves <protocol id> as an echo (every frame written back) for the reverse check.
//
// Options:
//   --echo-hex HEX     payload of the short echo frame (default: "ping from js-libp2p")
//   --echo-size N      size of the large echo frame, 0 for none (default: 300000); its bytes
//                      are pattern(i) = (i * 31 + 7) % 251
//   --publish-hex HEX  payload this node publishes on <topic> (default: "hello from js-libp2p")
//   --expect-hex HEX   payload that counts as the expected message (default: any message on
//                      <topic> whose signed originator is the dialled peer)
//   --msgid KIND       GossipSub message id function: "from-seqno" (default) is go-libp2p's and
//                      py-libp2p's: the originator's peer id bytes + the 8-byte seqno; "js-default"
//                      keeps js-libp2p's own (protobuf public key + seqno, 2 bytes shorter), which
//                      makes IHAVE/IWANT/IDONTWANT ids disagree with go/py peers (see README)
//   --timeout SEC      give up after SEC seconds, exit code 1 (default: 20)
//   --hold             after success print {"event":"done"}, then keep running (and serving)
//                      until stdin reaches EOF, so the other side decides when we go away
//
// stdout carries one JSON object per line and nothing else (diagnostics go to stderr):
//   listening {peerId, multiaddrs, versions}    first line, once listening
//   connected {peer, remoteAddr, encryption, multiplexer}
//   identify  {peer, agentVersion, protocolVersion, protocols, listenAddrs}
//   echo      {ok, protocol, frames: [{size, sha256}], mismatches}
//   served    {peer, protocol, frames: [{size, sha256}]}   an inbound echo stream ended
//   mesh      {peer, topic, meshPeers, gossipsubProtocols}
//   published {topic, dataHex, recipients}
//   message   {topic, from, dataHex, seqnoHex, msgIdHex, propagationSource, type}
//                                                         one line per gossip message
//   done      {}                                          every check passed; exit 0 follows
//   timeout   {missing}  /  error {stage, message}        exit 1 follows
//
// DEBUG=libp2p:* (or e.g. DEBUG=libp2p:gossipsub*,libp2p:yamux*) prints js-libp2p logs on stderr.

import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { lpStream } from 'it-length-prefixed-stream'
import { createLibp2p } from 'libp2p'

// Node 20 lacks Promise.withResolvers (ES2024, Node >= 22). it-queue (libp2p ->
// @libp2p/peer-store -> mortice -> it-queue, every published 1.x) calls it when the peer store
// takes a lock, i.e. on the first connection. Only called at run time, so defining it here,
// before createLibp2p(), is early enough.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const GOSSIPSUB_PROTOCOLS = ['/meshsub/1.2.0', '/meshsub/1.1.0', '/meshsub/1.0.0']
const MAX_FRAME = 4 * 1024 * 1024

function usage (message) {
  process.stderr.write(`${message}\nusage: node peer.mjs <multiaddr/p2p/id> <protocol> <topic> ` +
    '[--echo-hex HEX] [--echo-size N] [--publish-hex HEX] [--expect-hex HEX] ' +
    '[--msgid from-seqno|js-default] [--timeout SEC] [--hold]\n')
  process.exit(2)
}

function parseArgs (argv) {
  const positional = []
  const opts = {
    echoHex: Buffer.from('ping from js-libp2p').toString('hex'),
    echoSize: 300000,
    publishHex: Buffer.from('hello from js-libp2p').toString('hex'),
    expectHex: null,
    msgid: 'from-seqno',
    timeout: 20,
    hold: false
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`)
      return argv[++i]
    }
    if (arg === '--echo-hex') opts.echoHex = value().toLowerCase()
    else if (arg === '--echo-size') opts.echoSize = Number(value())
    else if (arg === '--publish-hex') opts.publishHex = value().toLowerCase()
    else if (arg === '--expect-hex') opts.expectHex = value().toLowerCase()
    else if (arg === '--msgid') opts.msgid = value()
    else if (arg === '--timeout') opts.timeout = Number(value())
    else if (arg === '--hold') opts.hold = true
    else if (arg.startsWith('--')) usage(`unknown option ${arg}`)
    else positional.push(arg)
  }
  if (positional.length !== 3) usage('expected exactly 3 positional arguments')
  if (!(opts.timeout > 0)) usage('--timeout must be a positive number')
  if (!['from-seqno', 'js-default'].includes(opts.msgid)) usage(`unknown --msgid ${opts.msgid}`)
  if (!Number.isInteger(opts.echoSize) || opts.echoSize < 0 || opts.echoSize > MAX_FRAME) {
    usage(`--echo-size must be an integer in [0, ${MAX_FRAME}]`)
  }
  for (const key of ['echoHex', 'publishHex', 'expectHex']) {
    if (opts[key] != null && !/^([0-9a-f]{2})*$/.test(opts[key])) usage(`bad hex for ${key}`)
  }
  const [target, protocol, topic] = positional
  return { target, protocol, topic, ...opts }
}

const args = parseArgs(process.argv.slice(2))

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

function log (...parts) {
  process.stderr.write(`[peer.mjs ${new Date().toISOString()}] ${parts.join(' ')}\n`)
}

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const describe = (bytes) => ({ size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') })

function pattern (size) {
  const out = Buffer.alloc(size)
  for (let i = 0; i < size; i++) out[i] = (i * 31 + 7) % 251
  return out
}

const seqnoBytes = (seqno) => Buffer.from(seqno.toString(16).padStart(16, '0'), 'hex')

// go-libp2p-pubsub's DefaultMsgIdFn, which py-libp2p's default (get_peer_and_seqno_msg_id)
// matches: the originator's peer id bytes (for Ed25519: the identity multihash of the protobuf
// public key), then the seqno as 8 big-endian bytes. js-libp2p's default leaves out the
// 2-byte multihash prefix (0x00 0x24).
function fromSeqnoMsgId (msg) {
  if (msg.type !== 'signed') throw new Error('expected a signed message (StrictSign)')
  return Uint8Array.from(Buffer.concat([msg.from.toMultihash().bytes, seqnoBytes(msg.sequenceNumber)]))
}

function installedVersion (name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url)
  return JSON.parse(readFileSync(url, 'utf8')).version
}

let node = null
let exiting = false

async function finish (code) {
  if (exiting) return
  exiting = true
  clearTimeout(timer)
  try {
    if (node != null) await node.stop()
  } catch (err) {
    log('stop failed:', err?.stack ?? err)
  }
  // Exit once stdout is flushed (it is a pipe when run by the test).
  process.stdout.write('', () => process.exit(code))
}

function fail (stage, err) {
  if (exiting) return
  log(`${stage} failed:`, err?.stack ?? err)
  emit('error', { stage, message: String(err?.message ?? err) })
  void finish(1)
}

const pending = new Set(['connected', 'identify', 'echo', 'mesh', 'published', 'message'])
const timer = setTimeout(() => {
  emit('timeout', { missing: [...pending] })
  void finish(1)
}, args.timeout * 1000)

function completed (step) {
  if (!pending.delete(step) || pending.size > 0 || exiting) return
  emit('done')
  if (!args.hold) {
    void finish(0)
    return
  }
  // --hold: the test closes our stdin once it has checked its own side.
  clearTimeout(timer)
  const release = () => { void finish(0) }
  process.stdin.once('end', release)
  process.stdin.once('close', release)
  process.stdin.resume()
}

process.on('unhandledRejection', (err) => fail('unhandledRejection', err))
process.on('uncaughtException', (err) => fail('uncaughtException', err))
process.on('SIGTERM', () => { void finish(1) })
process.on('SIGINT', () => { void finish(1) })

let target
try {
  target = multiaddr(args.target)
} catch (err) {
  usage(`bad multiaddr ${args.target}: ${err.message}`)
}
const targetPeer = target.getPeerId()
if (targetPeer == null) usage(`${args.target} has no /p2p/<peer id>`)

node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    pubsub: gossipsub({
      emitSelf: false,
      // We publish only once the dialled peer is in our mesh; this is a safety net.
      allowPublishToZeroTopicPeers: true,
      // Defaults, spelled out because the interop depends on them:
      globalSignaturePolicy: 'StrictSign', // = py-libp2p Pubsub(strict_signing=True)
      fallbackToFloodsub: false, // offer /meshsub/1.2.0, 1.1.0, 1.0.0 only
      heartbeatInterval: 1000,
      ...(args.msgid === 'from-seqno' ? { msgIdFn: fromSeqnoMsgId } : {})
    })
  }
})
const pubsub = node.services.pubsub

// ---- reverse direction: the other side opens a stream to us; echo every frame
await node.handle(args.protocol, async ({ stream, connection }) => {
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME })
  const frames = []
  try {
    while (true) {
      let frame
      try {
        frame = (await lp.read()).subarray()
      } catch (err) {
        if (err?.name === 'UnexpectedEOFError') break // clean end of the other side's writes
        throw err
      }
      frames.push(describe(frame))
      await lp.write(frame)
    }
    await stream.close()
    emit('served', { peer: connection.remotePeer.toString(), protocol: args.protocol, frames })
  } catch (err) {
    log('echo handler failed:', err?.stack ?? err)
    stream.abort(err)
  }
})

emit('listening', {
  peerId: node.peerId.toString(),
  multiaddrs: node.getMultiaddrs().map((ma) => ma.toString()),
  versions: Object.fromEntries([
    'libp2p', '@chainsafe/libp2p-noise', '@chainsafe/libp2p-yamux', '@libp2p/tcp',
    '@chainsafe/libp2p-gossipsub', '@libp2p/identify'
  ].map((name) => [name, installedVersion(name)]).concat([['node', process.versions.node]]))
})

node.addEventListener('peer:identify', (evt) => {
  const result = evt.detail
  if (result.peerId.toString() !== targetPeer) return
  emit('identify', {
    peer: targetPeer,
    agentVersion: result.agentVersion ?? null,
    protocolVersion: result.protocolVersion ?? null,
    protocols: result.protocols,
    listenAddrs: result.listenAddrs.map((ma) => ma.toString())
  })
  if (result.protocols.includes(args.protocol)) completed('identify')
  else fail('identify', new Error(`${targetPeer} does not list ${args.protocol}`))
})

// ---- gossip: subscribe before dialling so our SUBSCRIBE goes out in the first RPC
// 'gossipsub:message' is 'message' plus the message id (as computed here) and the forwarder.
pubsub.addEventListener('gossipsub:message', (evt) => {
  const { msg, msgId, propagationSource } = evt.detail
  if (msg.topic !== args.topic) return
  const dataHex = hex(msg.data)
  const from = msg.type === 'signed' ? msg.from.toString() : null
  emit('message', {
    topic: msg.topic,
    from,
    dataHex,
    seqnoHex: msg.type === 'signed' ? hex(seqnoBytes(msg.sequenceNumber)) : null,
    msgIdHex: hex(Buffer.from(msgId, 'base64')),
    propagationSource: propagationSource.toString(),
    type: msg.type
  })
  const expected = args.expectHex != null ? dataHex === args.expectHex : from === targetPeer
  if (expected) completed('message')
})
pubsub.subscribe(args.topic)

let published = false
async function maybePublish () {
  if (published || exiting) return
  const meshPeers = pubsub.getMeshPeers(args.topic)
  if (!meshPeers.includes(targetPeer)) return
  published = true
  const gossipsubProtocols = node.getConnections()
    .filter((conn) => conn.remotePeer.toString() === targetPeer)
    .flatMap((conn) => conn.streams)
    .filter((stream) => GOSSIPSUB_PROTOCOLS.includes(stream.protocol))
    .map((stream) => `${stream.direction}:${stream.protocol}`)
  emit('mesh', { peer: targetPeer, topic: args.topic, meshPeers, gossipsubProtocols })
  completed('mesh')
  try {
    const result = await pubsub.publish(args.topic, Buffer.from(args.publishHex, 'hex'))
    emit('published', {
      topic: args.topic,
      dataHex: args.publishHex,
      recipients: result.recipients.map((peer) => peer.toString())
    })
    completed('published')
  } catch (err) {
    fail('publish', err)
  }
}
// A GRAFT (either direction) or a heartbeat may be what puts the peer into our mesh.
pubsub.addEventListener('gossipsub:graft', () => { void maybePublish() })
pubsub.addEventListener('gossipsub:heartbeat', () => { void maybePublish() })

// ---- dial: TCP, multistream-select /noise, Noise XX, multistream-select /yamux/1.0.0
try {
  const connection = await node.dial(target)
  if (connection.remotePeer.toString() !== targetPeer) {
    throw new Error(`dialled ${targetPeer} but authenticated ${connection.remotePeer}`)
  }
  emit('connected', {
    peer: targetPeer,
    remoteAddr: connection.remoteAddr.toString(),
    encryption: connection.encryption ?? null,
    multiplexer: connection.multiplexer ?? null
  })
  completed('connected')
} catch (err) {
  fail('dial', err)
}

// ---- echo: a new Yamux stream, multistream-select <protocol>, frames there and back
if (!exiting) {
  try {
    const stream = await node.dialProtocol(target, args.protocol)
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME })
    const payloads = [Buffer.from(args.echoHex, 'hex')]
    if (args.echoSize > 0) payloads.push(pattern(args.echoSize))
    const frames = []
    let mismatches = 0
    for (const sent of payloads) {
      await lp.write(sent)
      const received = (await lp.read()).subarray()
      frames.push(describe(received))
      if (Buffer.compare(Buffer.from(received), sent) !== 0) mismatches++
    }
    await stream.close()
    const ok = mismatches === 0
    emit('echo', { ok, protocol: stream.protocol, frames, mismatches })
    if (!ok) throw new Error(`${mismatches} echoed frame(s) differ from what was sent`)
    completed('echo')
  } catch (err) {
    fail('echo', err)
  }
}

void maybePublish()
