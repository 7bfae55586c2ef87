"""The inference tunnel's shared machinery: frame encoding, the coalescing outbox, the frame reader.

The protocol itself (one stream per gateway-node pair, exchanges tagged by request number,
per-request credit) is specified in ``proto/tooti/v1/tooti.proto`` above ``TunnelFrame``; the
gateway's half lives in ``tooti.gateway.relay``, the node's in ``tooti.node.service``.

Why a tunnel: a fresh libp2p stream costs ≈5 ms and ≈3 ms CPU on each side, and every write on
a stream is its own yamux frame and Noise message (≈0.1 ms CPU each way). Carrying every exchange
on one stream, with one writer that sends whatever all requests queued since its last write in a
single write, makes the per-token cost of the hop a few dictionary lookups and a slice, and turns
N tokens ready at once into one yamux frame instead of N.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from tooti.wire import pb

from .framing import FrameError, encode

#: Per-request window: data bytes the node may send that the gateway has not credited back yet.
#: 256 KiB holds ~1,500 streamed tokens or a 256 KiB JSON answer before the first credit, and
#: bounds what one stalled client can park in the gateway's memory.
WINDOW = 256 * 1024
#: The gateway credits consumed bytes back once this many have piled up (one frame per 64 KiB).
CREDIT_EVERY = WINDOW // 4
#: Largest data frame payload; bigger blocks (whole JSON answers, request bodies) are split.
MAX_DATA = 64 * 1024
#: Largest frame of any kind. Heads, ends, resets and credits are tiny; an open frame carries at
#: most MAX_DATA of body (the rest follows in data frames) plus small fields.
MAX_FRAME = 4 * MAX_DATA
#: Largest head, end, credit or reset frame: these carry a status, a content type, usage or a
#: short error, never a body.
MAX_CONTROL_FRAME = 16 * 1024
#: The outbox makes a data sender wait above this much queued and unwritten.
HIGH_WATER = 1024 * 1024
_READ = 256 * 1024


class TunnelClosed(Exception):
    """The tunnel ended (its stream closed, reset or broke the protocol)."""


class ProtocolViolation(Exception):
    """The peer broke the tunnel protocol; the tunnel must end."""


def frame(message: pb.TunnelFrame) -> bytes:
    """A length-prefixed TunnelFrame."""
    return encode(message)


def _uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def data_frame(request: int, data: bytes, *, more: bool = False) -> bytes:
    """``frame(TunnelFrame(request=request, data=data, more=more))``, encoded by hand.

    The hot path: one of these per backend read. The bytes are exactly protobuf's encoding
    (field 1 varint, field 4 length-delimited, field 8 varint), so the peer parses them with
    the generated class; building them directly skips a message object per token.
    """
    body = b"\x08" + _uvarint(request) + b"\x22" + _uvarint(len(data)) + data
    if more:
        body += b"\x40\x01"
    return _uvarint(len(body)) + body


def credit_frame(request: int, amount: int) -> bytes:
    """``frame(TunnelFrame(request=request, credit=amount))``, encoded by hand."""
    body = b"\x08" + _uvarint(request) + b"\x30" + _uvarint(amount)
    return _uvarint(len(body)) + body


def reset_frame(request: int, reason: str) -> bytes:
    return frame(pb.TunnelFrame(request=request, reset=pb.TunnelReset(reason=reason)))


def pieces(data: bytes, size: int = MAX_DATA) -> list[bytes]:
    """``data`` cut into slices of at most ``size`` bytes (one slice when it fits)."""
    if len(data) <= size:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


class Outbox:
    """Frames queued by any number of tasks, written by one task, coalesced.

    ``put`` never waits (for small frames: heads, ends, credits, resets); ``put_wait`` waits
    while more than ``HIGH_WATER`` bytes are queued (for data), so a fast producer cannot grow
    the queue without bound. ``run`` writes everything queued since its last write in one
    write: under load many requests' frames share one yamux frame and one Noise message; at
    light load a frame goes out as soon as the writer task is scheduled (no timer, no delay).
    """

    __slots__ = ("_closed", "_drained", "_parts", "_size", "_stream", "_wake", "frames", "writes")

    #: frames and writes so far: frames / writes is how much the writer coalesced
    frames: int
    writes: int

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._parts: list[bytes] = []
        self._size = 0
        self._wake = trio.Event()
        self._drained = trio.Event()
        self._closed = False
        self.writes = 0
        self.frames = 0

    def put(self, data: bytes) -> None:
        if self._closed:
            raise TunnelClosed("tunnel closed")
        self._parts.append(data)
        self._size += len(data)
        self._wake.set()

    async def put_wait(self, data: bytes) -> None:
        while self._size > HIGH_WATER:
            if self._closed:
                raise TunnelClosed("tunnel closed")
            self._drained = trio.Event() if self._drained.is_set() else self._drained
            await self._drained.wait()
        self.put(data)

    def close(self) -> None:
        """Refuse further frames and wake every waiter (they see TunnelClosed)."""
        self._closed = True
        self._wake.set()
        self._drained.set()

    async def run(self) -> None:
        """Write until closed. Raises StreamError when the stream breaks."""
        stream = self._stream
        while True:
            while not self._parts:
                if self._closed:
                    return
                self._wake = trio.Event()
                await self._wake.wait()
            parts, self._parts, self._size = self._parts, [], 0
            self.writes += 1
            self.frames += len(parts)
            self._drained.set()
            await stream.write(parts[0] if len(parts) == 1 else b"".join(parts))


async def read_frames(stream: INetStream) -> AsyncIterator[list[pb.TunnelFrame]]:
    """The frames arriving on ``stream``, as lists of those that one read completed.

    Ends at a clean end of stream between frames. Raises FrameError (too large, malformed,
    truncated) and StreamError (reset) - both end the tunnel. Parsing works on an offset into
    the buffer, so a read holding hundreds of small frames costs no copying per frame.
    """
    buf = b""
    while True:
        try:
            chunk = await stream.read(_READ)
        except StreamEOF:
            chunk = b""
        if not chunk:
            if buf:
                raise FrameError("stream ended inside a frame")
            return
        buf = buf + chunk if buf else chunk
        out: list[pb.TunnelFrame] = []
        pos, end = 0, len(buf)
        while pos < end:
            # varint length
            length = shift = 0
            i = pos
            while True:
                if i >= end:
                    length = -1
                    break
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 28:
                    raise FrameError("frame length varint too long")
            if length < 0:
                break
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
            if end - i < length:
                break
            message = pb.TunnelFrame()
            try:
                message.ParseFromString(buf[i : i + length])
            except DecodeError:
                raise FrameError("malformed TunnelFrame") from None
            if length > MAX_CONTROL_FRAME and not (message.HasField("data") or message.HasField("open")):
                raise FrameError(f"a {message.WhichOneof('kind')} frame of {length} bytes")
            out.append(message)
            pos = i + length
        buf = buf[pos:]
        if out:
            yield out


__all__ = [
    "CREDIT_EVERY",
    "MAX_CONTROL_FRAME",
    "MAX_DATA",
    "MAX_FRAME",
    "WINDOW",
    "Outbox",
    "ProtocolViolation",
    "TunnelClosed",
    "credit_frame",
    "data_frame",
    "frame",
    "pieces",
    "read_frames",
    "reset_frame",
]
