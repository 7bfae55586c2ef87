"""Exchanges with nodes over pooled inference streams.

Opening a libp2p stream costs ≈5 ms of negotiation; a round trip on an open one ≈1 ms. The
pool keeps streams whose last exchange ended cleanly (an end frame was read) and hands them
out again; a stream that saw anything else is reset and never reused. It grows lazily: a
stream is opened only when no idle one is left, so a peer's pool is as large as the most
exchanges it has had at once (up to ``_MAX_IDLE_PER_PEER``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from tooti.p2p import protocols
from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.p2p.host import raise_stream_cap
from tooti.wire import pb

log = logging.getLogger("tooti.gateway")

# Above this many concurrent exchanges with one node, streams are closed on release and
# negotiated again (≈3 ms CPU on each side). 64 made every exchange past the 64th pay that,
# which was a third of the CPU per stream at 256 concurrent streams. An idle stream costs a
# blocked reader task on the node and a few KiB on each side; yamux allows 4,096 per
# connection here (host.STREAM_CAP), and nodes run far fewer exchanges than that at once.
_MAX_IDLE_PER_PEER = 1024


class _Reader(FrameReader):
    """A FrameReader that can also hand out the frames already buffered, without awaiting."""

    __slots__ = ()

    def buffered_raw(self) -> bytes | None:
        """The next frame's body if all of it is already buffered, else None (nothing consumed)."""
        buf = self._buf
        value = shift = 0
        for i, byte in enumerate(buf):
            if i >= 5:
                return None  # malformed: let read_frame raise it
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if value > self._max or len(buf) - i - 1 < value:
                    return None
                body = bytes(buf[i + 1 : i + 1 + value])
                del buf[: i + 1 + value]
                return body
        return None


class NodeFailure(Exception):
    """The node (or the path to it) failed: unreachable, reset, truncated, malformed."""


class _Conn:
    __slots__ = ("fresh", "reader", "stream")

    def __init__(self, stream: INetStream, fresh: bool) -> None:
        self.stream = stream
        self.reader = _Reader(stream)
        self.fresh = fresh


class StreamPool:
    def __init__(self, host: IHost) -> None:
        self._host = host
        self._idle: dict[str, list[_Conn]] = defaultdict(list)

    async def acquire(self, peer_id: str, *, fresh: bool = False) -> _Conn:
        idle = self._idle.get(peer_id)
        if idle and not fresh:
            return idle.pop()
        try:
            stream = await self._host.new_stream(ID.from_base58(peer_id), [protocols.INFERENCE])
        except Exception as exc:  # noqa: BLE001 - libp2p raises many kinds here
            raise NodeFailure(f"cannot open a stream: {type(exc).__name__}: {exc}") from None
        raise_stream_cap(stream)
        return _Conn(stream, fresh=True)

    def release(self, peer_id: str, conn: _Conn) -> None:
        idle = self._idle[peer_id]
        if len(idle) < _MAX_IDLE_PER_PEER:
            conn.fresh = False
            idle.append(conn)
        else:
            self._discard_soon(conn)

    def forget(self, peer_id: str) -> None:
        """Drop idle streams to a peer that went away."""
        self._idle.pop(peer_id, None)

    def _discard_soon(self, conn: _Conn) -> None:
        # Closing needs an await; the stream is idle and clean, so letting the connection's
        # teardown reclaim it is fine, but close it when we can to free the peer's slot.
        trio.lowlevel.spawn_system_task(_close_quietly, conn.stream)


async def _close_quietly(stream: INetStream) -> None:
    try:
        await stream.close()
    except Exception:  # noqa: BLE001
        pass


async def reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001
            pass


class Exchange:
    """One request/response with a node, from after its head frame to its end frame.

    Iterate ``data()`` for the body bytes, in order: the data frames already buffered together
    come out as one block (when the gateway falls behind, one HTTP chunk for several tokens),
    and a block is never held back waiting for more. Afterwards ``end`` holds the node's end
    frame. ``data()`` raises NodeFailure when the stream breaks before the end frame, and
    ``trio.TooSlowError`` when no frame arrives within ``idle_timeout``. ``close()`` returns
    the stream to the pool when the exchange finished cleanly, and resets it otherwise (which
    cancels the backend request on the node).
    """

    def __init__(
        self, pool: StreamPool, peer_id: str, conn: _Conn, head: pb.ResponseHead, idle_timeout: float
    ) -> None:
        self.pool = pool
        self.peer_id = peer_id
        self._conn = conn
        self.head = head
        self.end: pb.ResponseEnd | None = None
        self._idle_timeout = idle_timeout

    async def data(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        while True:
            try:
                with trio.fail_after(self._idle_timeout):
                    frame = await reader.read_frame(pb.ResponseFrame)
            except (StreamError, FrameError) as exc:
                raise NodeFailure(f"stream from node broke: {type(exc).__name__}") from None
            if frame is None:
                raise NodeFailure("node ended the stream without an end frame")
            kind = frame.WhichOneof("kind")
            if kind == "data":
                block = frame.data
                more = reader.buffered_raw()
                if more is None:
                    yield block
                    continue
                block, end = _coalesce(block, more, reader)
                yield block
                if end is not None:
                    self.end = end
                    return
            elif kind == "end":
                self.end = frame.end
                return
            else:
                raise NodeFailure(f"unexpected {kind} frame")

    async def close(self) -> None:
        if self.end is not None:
            self.pool.release(self.peer_id, self._conn)
        else:
            await reset_quietly(self._conn.stream)


def _coalesce(first: bytes, raw: bytes | None, reader: _Reader) -> tuple[bytes, pb.ResponseEnd | None]:
    """Join ``first`` with the data of the complete frames already buffered (``raw`` is the next
    one's body), stopping after an end frame. Returns the joined bytes and that end frame, if any.
    Raises NodeFailure on a malformed or unexpected frame, as ``Exchange.data`` would."""
    parts = [first]
    while raw is not None:
        frame = pb.ResponseFrame()
        try:
            frame.ParseFromString(raw)
        except DecodeError:
            raise NodeFailure("stream from node broke: FrameError") from None
        kind = frame.WhichOneof("kind")
        if kind == "data":
            parts.append(frame.data)
        elif kind == "end":
            return b"".join(parts), frame.end
        else:
            raise NodeFailure(f"unexpected {kind} frame")
        raw = reader.buffered_raw()
    return b"".join(parts), None


async def start_exchange(
    pool: StreamPool,
    peer_id: str,
    request: pb.InferenceRequest,
    *,
    first_byte_timeout: float,
    idle_timeout: float,
) -> Exchange:
    """Send ``request`` to ``peer_id`` and wait for the head frame.

    Raises NodeFailure when the node cannot be reached or breaks before its head (safe to
    retry elsewhere: the client has seen nothing), ``trio.TooSlowError`` after
    ``first_byte_timeout``. A pooled stream that turns out dead is replaced once by a fresh one.
    """
    frame_bytes = encode(pb.GatewayFrame(request=request))
    conn = await pool.acquire(peer_id)
    while True:
        try:
            await conn.stream.write(frame_bytes)
            with trio.fail_after(first_byte_timeout):
                frame = await conn.reader.read_frame(pb.ResponseFrame)
            if frame is None or frame.WhichOneof("kind") != "head":
                raise NodeFailure("node answered without a head frame")
            return Exchange(pool, peer_id, conn, frame.head, idle_timeout)
        except (StreamError, FrameError, NodeFailure) as exc:
            await reset_quietly(conn.stream)
            if conn.fresh:
                raise NodeFailure(str(exc) or type(exc).__name__) from None
            conn = await pool.acquire(peer_id, fresh=True)  # the pooled one was stale
        except BaseException:
            await reset_quietly(conn.stream)
            raise
