"""Wire interop with another libp2p implementation: our Libp2pTransport against js-libp2p.

``tests/interop/js/peer.mjs`` (js-libp2p 2.x, versions pinned in its package-lock.json) dials our
node over TCP and must get through multistream-select, Noise XX and Yamux. Then, on that one
connection (see tests/interop/README.md):

* identify: the JS node parses our identify response, which lists the echo protocol;
* echo, JS -> us: a Yamux stream negotiated by multistream-select carries unsigned-varint
  length-prefixed frames to our handler and back (a short frame, then one large enough to need
  Yamux window updates and several Noise frames);
* echo, us -> JS: the same over a stream we open to the JS node's echo handler;
* gossip, both ways: GossipSub v1.1+ with StrictSign; a message we publish arrives at JS and
  the JS node's publish arrives in our subscription, each attributed to the signing peer.

Needs Node.js >= 20 and npm; runs ``npm ci`` first if node_modules is missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from pithnode.node.libp2p_transport import Libp2pTransport
from pithnode.node.transport import (
    GossipMessage,
    PeerEvent,
    PeerEventKind,
    PeerId,
    Stream,
    StreamClosed,
    TransportConfig,
)

pytestmark = pytest.mark.slow

JS_DIR = Path(__file__).resolve().parent / "interop" / "js"
PEER_SCRIPT = JS_DIR / "peer.mjs"
PROTOCOL = "/pithnode/interop-echo/1.0.0"
TOPIC = "pithnode/interop/1"
SEED = hashlib.sha256(b"pithnode js-libp2p interop").digest()

SMALL_FRAME = b"ping from js-libp2p"
LARGE_FRAME_SIZE = 300_000  # > Yamux's 256 KiB initial window, > 4 Noise frames
PY_MESSAGE = b"hello from pithnode (py-libp2p)"
JS_MESSAGE = b"hello from js-libp2p"

MIN_NODE_MAJOR = 20
NPM_TIMEOUT = 240.0  # a cold npm ci; from the npm cache it takes a few seconds
INTEROP_TIMEOUT = 30.0
JS_TIMEOUT = 25.0  # the JS peer gives up (and says what it missed) before we do
STDERR_KEEP = 64 * 1024


def pattern(size: int) -> bytes:
    """The large echo frame's bytes; peer.mjs builds the same."""
    return bytes((i * 31 + 7) % 251 for i in range(size))


def describe(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def peer_id_bytes(peer: PeerId) -> bytes:
    """The binary peer id (a multihash) behind its base58btc text."""
    number = 0
    for char in peer:
        number = number * 58 + _B58.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(peer) - len(peer.lstrip("1"))) + body


# ---------------------------------------------------------------- Node.js and npm


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: this interop test needs Node.js >= {MIN_NODE_MAJOR} "
            "with npm (see tests/interop/README.md)",
            pytrace=False,
        )
    return path


async def ensure_js_peer() -> str:
    """The node executable, with peer.mjs's node_modules installed by ``npm ci`` if needed."""
    node = require_tool("node")
    version = await trio.run_process([node, "--version"], capture_stdout=True)
    text = version.stdout.decode().strip()
    major = int(text.lstrip("v").split(".")[0])
    if major < MIN_NODE_MAJOR:
        pytest.fail(f"node {text} is too old; the interop test needs Node.js >= "
                    f"{MIN_NODE_MAJOR}", pytrace=False)
    # npm ci writes node_modules/.package-lock.json; a newer package-lock.json means stale.
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    lock = JS_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = require_tool("npm")
        with trio.fail_after(NPM_TIMEOUT):
            result = await trio.run_process(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=JS_DIR,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            pytest.fail(f"npm ci in {JS_DIR} failed (rc={result.returncode}):\n{output}",
                        pytrace=False)
    return node


# ---------------------------------------------------------------- the JS peer's output


class JsPeer:
    """Reads peer.mjs's JSON lines and keeps a transcript (and its stderr) for failures."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._buf = bytearray()
        self._stderr = bytearray()
        self._eof = False

    async def drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(65536):
            self._stderr += chunk
            del self._stderr[:-STDERR_KEEP]

    def diagnostics(self) -> str:
        lines = "\n".join(json.dumps(event) for event in self.events) or "(nothing)"
        stderr = self._stderr.decode(errors="replace") or "(nothing)"
        return (f"\n--- peer.mjs stdout (rc={self.process.returncode}) ---\n{lines}"
                f"\n--- peer.mjs stderr (tail) ---\n{stderr}")

    async def _read_event(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                self._eof = True
                return None
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf[:] = rest
        try:
            event = json.loads(line)
        except ValueError:
            event = {"event": "unparsable", "line": line.decode(errors="replace")}
        if not isinstance(event, dict):
            event = {"event": "unparsable", "line": line.decode(errors="replace")}
        self.events.append(event)
        return event

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next not yet consumed ``kind`` event, reading lines as needed."""
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                if event.get("event") in ("error", "timeout", "unparsable"):
                    pytest.fail(f"peer.mjs reported {event} while we waited for {kind!r}"
                                f"{self.diagnostics()}", pytrace=False)
                if index not in self._consumed and event.get("event") == kind:
                    self._consumed.add(index)
                    return event
                index += 1
            if self._eof or await self._read_event() is None:
                pytest.fail(f"peer.mjs ended its output before {kind!r}{self.diagnostics()}",
                            pytrace=False)


# ---------------------------------------------------------------- our side


class EchoHandler:
    """Our stream handler: echo every frame, remember them, signal when the stream ends."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.peers: list[PeerId] = []
        self.finished = trio.Event()

    async def __call__(self, stream: Stream) -> None:
        self.peers.append(stream.remote_peer)
        try:
            while True:
                try:
                    frame = await stream.receive_frame()
                except StreamClosed:
                    return
                self.frames.append(frame)
                await stream.send_frame(frame)
        finally:
            self.finished.set()


class GossipLog:
    """Our topic validator: accept and record."""

    def __init__(self) -> None:
        self.seen: list[tuple[PeerId, bytes]] = []

    def __call__(self, sender: PeerId, data: bytes) -> bool:
        self.seen.append((sender, data))
        return True


# ---------------------------------------------------------------- the test


async def test_js_libp2p_interop(nursery: trio.Nursery) -> None:
    node = await ensure_js_peer()

    transport = Libp2pTransport(
        SEED, TransportConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), dial_timeout=10.0)
    )
    handler = EchoHandler()
    transport.set_stream_handler(PROTOCOL, handler)
    gossip_log = GossipLog()
    subscription = transport.subscribe(TOPIC, gossip_log)
    peer_events = transport.peer_events()

    js: JsPeer | None = None
    with trio.move_on_after(INTEROP_TIMEOUT) as deadline:
        await nursery.start(transport.run)
        our_addr = transport.listen_addresses()[0]
        assert our_addr.startswith("/ip4/127.0.0.1/tcp/")
        assert our_addr.endswith(f"/p2p/{transport.peer_id}")

        command = [
            node, str(PEER_SCRIPT), our_addr, PROTOCOL, TOPIC,
            "--echo-hex", SMALL_FRAME.hex(),
            "--echo-size", str(LARGE_FRAME_SIZE),
            "--publish-hex", JS_MESSAGE.hex(),
            "--expect-hex", PY_MESSAGE.hex(),
            "--timeout", str(JS_TIMEOUT),
            "--hold",
        ]
        process: trio.Process = await nursery.start(partial(
            trio.run_process, command, cwd=JS_DIR, check=False,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
        js = JsPeer(process)
        nursery.start_soon(js.drain_stderr)

        try:
            await check_interop(transport, js, handler, gossip_log, subscription, peer_events)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{js.diagnostics()}") from None

        # Every check passed on both sides: let the JS node stop, and check it exits cleanly.
        assert process.stdin is not None
        await process.stdin.aclose()
        await process.wait()
        assert process.returncode == 0, f"peer.mjs exited with {process.returncode}" \
            f"{js.diagnostics()}"
    if deadline.cancelled_caught:
        where = js.diagnostics() if js is not None else " (peer.mjs was not started)"
        pytest.fail(f"interop did not finish within {INTEROP_TIMEOUT}s{where}", pytrace=False)

    stats = transport.stats()
    assert stats.handler_errors == 0
    assert stats.handler_stream_errors == 0
    assert stats.messages_rejected == 0
    assert stats.messages_dropped == 0


async def check_interop(
    transport: Libp2pTransport,
    js: JsPeer,
    handler: EchoHandler,
    gossip_log: GossipLog,
    subscription: trio.MemoryReceiveChannel[GossipMessage],
    peer_events: trio.MemoryReceiveChannel[PeerEvent],
) -> None:
    listening = await js.expect("listening")
    js_id = PeerId(listening["peerId"])
    assert listening["multiaddrs"], listening

    # 1. connection: TCP + multistream-select + Noise XX + Yamux, JS dials us.
    async for event in peer_events:
        if event.kind is PeerEventKind.CONNECTED and event.peer == js_id:
            break
    assert js_id in transport.connected_peers()
    connected = await js.expect("connected")
    assert connected["peer"] == transport.peer_id
    assert connected["encryption"] == "/noise"
    assert connected["multiplexer"] == "/yamux/1.0.0"

    # 2. identify, their side: our response parses and lists the echo protocol.
    identify = await js.expect("identify")
    assert PROTOCOL in identify["protocols"]
    assert "/meshsub/1.1.0" in identify["protocols"]

    # 3. echo, JS -> us.
    echo = await js.expect("echo")
    sent = [SMALL_FRAME, pattern(LARGE_FRAME_SIZE)]
    assert echo["ok"] is True
    assert echo["protocol"] == PROTOCOL
    assert echo["frames"] == [describe(frame) for frame in sent]
    await handler.finished.wait()
    assert handler.peers == [js_id]
    assert handler.frames == sent

    # 4. echo, us -> JS, on a stream we open over the JS node's connection.
    stream = await transport.open_stream(js_id, PROTOCOL)
    reverse = [b"ping from pithnode", pattern(LARGE_FRAME_SIZE)[::-1]]
    for frame in reverse:
        await stream.send_frame(frame)
        assert await stream.receive_frame() == frame
    await stream.close()
    with pytest.raises(StreamClosed):  # the JS handler closes cleanly after our close
        await stream.receive_frame()
    served = await js.expect("served")
    assert served["peer"] == transport.peer_id
    assert served["frames"] == [describe(frame) for frame in reverse]

    # 5. gossip, both ways, once each side has the other in its mesh.
    await transport.wait_for_topic_peers(TOPIC, [js_id])
    await transport.publish(TOPIC, PY_MESSAGE)
    while True:
        message = await js.expect("message")
        if message["dataHex"] == PY_MESSAGE.hex():
            break
    assert message["from"] == transport.peer_id
    assert message["propagationSource"] == transport.peer_id
    assert message["type"] == "signed"
    # peer.mjs computes message ids the go-libp2p / py-libp2p way (from + seqno); our pubsub
    # uses the same ids in IHAVE/IWANT (js-libp2p's default would differ, see the README).
    seqno = bytes.fromhex(message["seqnoHex"])
    assert len(seqno) == 8
    assert message["msgIdHex"] == (peer_id_bytes(transport.peer_id) + seqno).hex()
    mesh = await js.expect("mesh")
    assert mesh["gossipsubProtocols"], mesh
    assert set(mesh["gossipsubProtocols"]) <= {
        f"{direction}:{protocol}"
        for direction in ("inbound", "outbound")
        for protocol in ("/meshsub/1.2.0", "/meshsub/1.1.0")
    }, mesh
    published = await js.expect("published")
    assert published["recipients"] == [transport.peer_id]
    received = await subscription.receive()
    assert received == GossipMessage(js_id, JS_MESSAGE)
    assert (js_id, JS_MESSAGE) in gossip_log.seen

    await js.expect("done")
