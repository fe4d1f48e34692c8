"""A bare HTTP/2 client (prior knowledge, cleartext) that sends headers as given.

httpx validates what it sends; these tests need requests no well-behaved client makes (a
``:path`` or ``:method`` that is not ASCII, a CONNECT without ``:path``), on one connection,
and read back each stream's response. Await it inside ``fail_after``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import trio

__all__ = ["H2Client", "H2Response", "h2_request_headers"]


@dataclass
class H2Response:
    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False  # the server ended its side normally
    reset: int | None = None  # RST_STREAM error code, when the server reset the stream


def h2_request_headers(path: bytes, method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":path", path), (b":scheme", b"http"),
            (b":authority", b"mirror.test")]


class H2Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.responses: dict[int, H2Response] = {}
        self.closed = False

    @classmethod
    async def open(cls, url: str) -> H2Client:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        client = cls(await trio.open_tcp_stream(host, int(port)))
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def queue(self, headers: list[tuple[bytes, bytes]]) -> int:
        """A bodiless request, not sent until :meth:`flush` (to put several frames in one
        write); its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        self.responses[stream_id] = H2Response()
        self.conn.send_headers(stream_id, headers, end_stream=True)
        return stream_id

    async def request(self, headers: list[tuple[bytes, bytes]], body: bytes | None = None
                      ) -> int:
        """Send one request as it is; the stream id to wait on with :meth:`response`.

        A body goes out in frames as the flow-control windows allow (waiting for the
        server's WINDOW_UPDATE when they are spent), unless the server ends the stream.
        """
        stream_id = self.conn.get_next_available_stream_id()
        resp = self.responses[stream_id] = H2Response()
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if not body:
            await self.flush()
        rest = body or b""  # its first frame goes out with the headers, in one write
        while rest and not (resp.ended or resp.reset is not None or self.closed):
            room = min(self.conn.local_flow_control_window(stream_id),
                       self.conn.max_outbound_frame_size)
            if room == 0:
                await self.flush()
                await self._receive()
                continue
            chunk, rest = rest[:room], rest[room:]
            self.conn.send_data(stream_id, chunk, end_stream=not rest)
            await self.flush()
        return stream_id

    async def response(self, stream_id: int) -> H2Response:
        """Read until that stream is ended or reset (or the server closes)."""
        resp = self.responses[stream_id]
        while not (resp.ended or resp.reset is not None or self.closed):
            await self._receive()
        return resp

    async def _receive(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self._on(event)
        await self.flush()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True
            return
        if not (isinstance(event, h2.events.ResponseReceived | h2.events.DataReceived
                           | h2.events.StreamEnded | h2.events.StreamReset)
                and event.stream_id in self.responses):
            return
        resp = self.responses[event.stream_id]
        if isinstance(event, h2.events.ResponseReceived):
            headers = {bytes(k): bytes(v) for k, v in event.headers or ()}
            resp.status = int(headers.pop(b":status"))
            resp.headers = headers
        elif isinstance(event, h2.events.DataReceived):
            resp.body += event.data or b""
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0,
                                                event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            resp.ended = True
        else:
            resp.reset = event.error_code
