"""Serving an ASGI app with hypercorn on trio, so that no client can stop the server.

hypercorn's trio worker (``worker_serve``) runs every connection in one nursery: an exception
that escapes one connection's handler stops the whole server, and with it the node. hypercorn
0.18 raises such exceptions on HTTP/2 input any client can send:

* a request whose ``:method`` or ``:path`` is not ASCII (it decodes both as ASCII while it
  builds the request, outside the app), or that has no ``:path`` (a plain CONNECT);
* a DATA frame for a stream it has finished with (a body still arriving after the app
  answered, as it does for a POST it refuses with 405): KeyError;
* PRIORITY frames for 1,001 streams that were never opened: TooManyStreamsError;
* an HTTP/1.1 ``Upgrade: h2c`` whose ``HTTP2-Settings`` header is malformed (it answers
  101, then h2 fails to read the settings).

Otherwise HTTP/1.1 is safe: h11 refuses a request line that is not visible ASCII with 400.

So this module serves with hypercorn's own connection and protocol classes in a loop of its
own, with two guards:

* :class:`_H2Protocol` handles those HTTP/2 events before hypercorn sees them: a 400 (JSON,
  like the app's errors) for a request it cannot build, DATA of finished streams dropped
  (its flow-control window given back) and PRIORITY of unknown streams ignored; the
  connection and its other streams go on. :class:`_ProtocolWrapper` closes a connection
  whose h2c upgrade cannot be read;
* :func:`_serve_connection` runs each connection inside an edge that logs any other
  exception and closes that one connection; the server serves on.

This is the only module that knows hypercorn's insides (its version is pinned in
``requirements.lock``); the app is hypercorn-agnostic. Lifespan events are not sent: the
mirror's app keeps no state to start or stop.
"""

from __future__ import annotations

import json
import logging
import socket
from functools import partial
from typing import TYPE_CHECKING, cast

import h2.errors
import h2.events
import h2.exceptions
import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import parse_socket_addr, wrap_app
from hyperframe.exceptions import HyperframeError

if TYPE_CHECKING:
    from hypercorn.events import Event
    from hypercorn.typing import ASGIFramework

    # trio-typing (pulled in by libp2p) ships stubs that shadow trio's own annotations.
    from trio_typing import TaskStatus

__all__ = ["NOT_ASCII_TARGET", "TRIPPED_BY_CLIENT", "serve_asgi"]

log = logging.getLogger(__name__)

#: The 400 message for a request target with bytes outside visible ASCII (the app's too).
NOT_ASCII_TARGET = ("the request target may hold only visible ASCII; percent-encode other "
                    "bytes")


def _unbuildable(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why hypercorn cannot build an HTTP/2 request from these headers, or None if it can.

    hypercorn decodes ``:method`` and ``:path`` as ASCII and needs a ``:path`` even for a
    CONNECT (h2 lets a plain CONNECT through without one).
    """
    fields = {name: value for name, value in headers if name in (b":method", b":path")}
    method, path = fields.get(b":method"), fields.get(b":path")
    if method is None or not method.isascii():
        return "the request method must be ASCII"
    if path is None:
        return "an HTTP/2 request to this mirror needs a :path"
    if not path.isascii():
        return NOT_ASCII_TARGET
    return None


class _H2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol, with the events it cannot handle handled here first.

    * a request it cannot build gets a 400 (:meth:`_refuse`);
    * DATA for a stream it no longer has (refused, or answered before the client finished
      sending its body: hypercorn looks the stream up and fails with KeyError) is dropped
      and acknowledged, so the connection's window is given back. (It is not reset:
      hypercorn forgets a stream before its END_STREAM is out, and a reset then could cut
      the response short.)
    * PRIORITY for a stream it does not have is ignored (hypercorn would add it to its
      priority tree, never remove it, and fail once the tree holds 1,000 streams).

    Events go to hypercorn one at a time, so each check sees its current streams.
    """

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                headers = list(event.headers or ())
                reason = _unbuildable(headers)
                if reason is not None:
                    self._refuse(event.stream_id, reason,
                                 head=(b":method", b"HEAD") in headers)
                    continue
            elif (isinstance(event, h2.events.DataReceived) and event.stream_id is not None
                  and event.stream_id not in self.streams):
                self.connection.acknowledge_received_data(event.flow_controlled_length or 0,
                                                          event.stream_id)
                continue
            elif (isinstance(event, h2.events.PriorityUpdated)
                  and event.stream_id not in self.streams):
                continue
            await super()._handle_events([event])
        await self._flush()

    def _refuse(self, stream_id: int, reason: str, *, head: bool) -> None:
        """Queue a complete 400 on the stream, then end the client's side of it too."""
        conn = self.connection
        if stream_id not in conn.streams or conn.streams[stream_id].closed:
            return  # the client reset the stream in the same read: nobody to answer
        body = json.dumps({"error": {"status": 400, "message": reason}},
                          separators=(",", ":")).encode()
        if head or len(body) > conn.local_flow_control_window(stream_id):
            body = b""  # HEAD, or no room in the client's window: the status says it all
        conn.send_headers(stream_id, [
            (b":status", b"400"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff")], end_stream=not body)
        if body:
            conn.send_data(stream_id, body, end_stream=True)
        if not conn.streams[stream_id].closed:  # the client is still sending: our response
            # is complete, so it may be told to stop (RFC 9113 8.1)
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)


class _ProtocolWrapper(ProtocolWrapper):
    """hypercorn's, switching to :class:`_H2Protocol` where it would use ``H2Protocol``."""

    def _h2(self) -> _H2Protocol:
        return _H2Protocol(self.app, self.config, self.context, self.task_group, self.state,
                           self.ssl, self.client, self.server, self.send)

    async def handle(self, event: Event) -> None:
        try:
            await self.protocol.handle(event)
            return
        except H2ProtocolAssumedError as error:  # HTTP/2 with prior knowledge
            self.protocol = self._h2()
            await self.protocol.initiate()
            data = error.data
        except H2CProtocolRequiredError as error:  # HTTP/1.1 Upgrade: h2c, 101 already sent
            self.protocol = self._h2()
            try:
                await self.protocol.initiate(error.headers, error.settings)
            except (ValueError, HyperframeError, h2.exceptions.ProtocolError) as exc:
                # a malformed HTTP2-Settings header (base64, frame or values): the client's
                # fault, and too late for a 400, so the connection is closed
                log.info("closing an HTTP connection: its h2c upgrade has a bad "
                         "HTTP2-Settings header (%s)", exc)
                await self.send(Closed())
                return
            data = error.data
        if data != b"":
            await self.protocol.handle(RawData(data=data))


class _TCPServer(TCPServer):
    """hypercorn's connection handler for plain TCP, with :class:`_ProtocolWrapper`.

    ``run`` is hypercorn's own less its TLS branch (this server never speaks TLS).
    """

    async def run(self) -> None:
        sock = cast("trio.SocketStream", self.stream).socket
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _ProtocolWrapper(
                    self.app, self.config, self.context, task_group,
                    ConnectionState(self.state), False, client, server, self.protocol_send)
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except* OSError:  # the client went away (hypercorn's "except OSError", which misses
            pass  # an error raised inside its task group, now that trio groups them)
        finally:
            await self._close()


#: What hypercorn raises when a client's input trips it up (see _serve_connection).
TRIPPED_BY_CLIENT = (h11.ProtocolError, trio.BusyResourceError)


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    return [leaf for exc in group.exceptions
            for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


async def _serve_connection(app: AppWrapper, config: Config, context: WorkerContext,
                            stream: trio.SocketStream) -> None:
    """One connection, start to end; whatever fails in it ends it and nothing else."""
    try:
        await _TCPServer(app, config, context, {}, cast("trio.SSLStream[trio.SocketStream]",
                                                        stream)).run()
    except* TRIPPED_BY_CLIENT as group:
        # hypercorn trips over a malformed or badly timed request this way (an error
        # response on an h11 connection already in error, e.g. data pipelined after a
        # WebSocket upgrade; two of its tasks writing at once): the client's doing, so one
        # line, no traceback
        first = _leaves(group)[0]
        log.warning("HTTP connection closed: the server tripped over its input (%s: %s)",
                    type(first).__name__, first)
    except* Exception:
        # edge: any other failure inside hypercorn (or h2/h11) is a bug to fix, but it
        # belongs to this one client: log it, drop the connection, serve the others
        log.exception("HTTP connection failed inside the server; closed it and serving on")
    finally:
        await trio.aclose_forcefully(stream)


async def serve_asgi(app: ASGIFramework, config: Config, sock: socket.socket, *,
                     task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on the bound, listening, non-blocking ``sock`` until cancelled.

    ``task_status.started()`` once connections are being accepted. ``sock`` stays the
    caller's to close.
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners,
                            partial(_serve_connection, wrapped, config, context), [listener])
        task_status.started()
