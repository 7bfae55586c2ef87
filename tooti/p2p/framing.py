"""Length-prefixed protobuf frames over a byte stream.

Each frame is an unsigned LEB128 varint length followed by that many bytes of one
serialized protobuf message. Frames larger than ``max_frame`` are refused before any of
their body is buffered, so a hostile peer cannot make us allocate more than that.

We do our own framing rather than ``read_exactly`` from libp2p: that helper gives up after
100 partial reads, which a slow large frame can hit.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from google.protobuf.message import DecodeError, Message
from libp2p.network.stream.exceptions import StreamEOF

DEFAULT_MAX_FRAME = 8 * 1024 * 1024

M = TypeVar("M", bound=Message)


class FrameError(Exception):
    """The peer sent something that is not a valid frame (too large, bad varint, bad protobuf)."""


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


def encode(message: Message) -> bytes:
    """Serialize ``message`` with its length prefix."""
    body = message.SerializeToString()
    return _uvarint(len(body)) + body


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class FrameReader:
    """Reads frames from a stream, keeping whatever bytes arrived past the current frame.

    ``read_frame`` returns ``None`` on a clean end of stream *between* frames; an end of
    stream inside a frame raises :class:`FrameError` (that is truncation, not an ending).
    Exceptions from the underlying stream (reset, closed) propagate unchanged.
    """

    __slots__ = ("_buf", "_eof", "_max", "_stream")

    def __init__(self, stream: ByteStream, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._max = max_frame
        self._eof = False

    async def fill(self) -> bool:
        """Read once more from the stream into the buffer. False at end of stream.

        Used to watch a stream for a reset or an end while no frame is expected; any bytes
        that arrive are kept for the next ``read_frame``.
        """
        if self._eof:
            return False
        chunk = await _read_some(self._stream)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def read_raw(self) -> bytes | None:
        length = await self._read_length()
        if length is None:
            return None
        while len(self._buf) < length:
            if not await self.fill():
                raise FrameError(f"stream ended inside a frame ({len(self._buf)}/{length} bytes)")
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body

    async def read_frame(self, message_type: type[M]) -> M | None:
        raw = await self.read_raw()
        if raw is None:
            return None
        message = message_type()
        try:
            message.ParseFromString(raw)
        except DecodeError as exc:
            raise FrameError(f"malformed {message_type.__name__}: {exc}") from None
        return message

    async def _read_length(self) -> int | None:
        while True:
            value = 0
            for i, byte in enumerate(self._buf):
                if i >= 5:
                    raise FrameError("frame length varint too long")
                value |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    del self._buf[: i + 1]
                    if value > self._max:
                        raise FrameError(f"frame of {value} bytes exceeds the {self._max} byte limit")
                    return value
            if not await self.fill():
                if self._buf:
                    raise FrameError("stream ended inside a frame length")
                return None


async def _read_some(stream: ByteStream) -> bytes:
    # libp2p signals a clean end of stream with StreamEOF rather than b"".
    try:
        return await stream.read(65536)
    except StreamEOF:
        return b""


async def write_frame(stream: ByteStream, message: Message) -> None:
    await stream.write(encode(message))
