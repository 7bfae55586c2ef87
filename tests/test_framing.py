"""Length-prefixed framing: round trips, size limits, truncation, garbage."""

from __future__ import annotations

import pytest

from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.wire import pb


class _Bytes:
    """A byte stream that returns its data in chunks of ``step`` bytes, then EOF."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self.data, self.step = data, step

    async def read(self, n: int | None = None) -> bytes:
        out, self.data = self.data[: self.step], self.data[self.step :]
        return out

    async def write(self, data: bytes) -> None:  # pragma: no cover - unused
        raise AssertionError


async def test_round_trip_in_small_pieces() -> None:
    frames = [pb.TunnelFrame(request=1, data=b"x" * 1000), pb.TunnelFrame(request=1, end=pb.ResponseEnd())]
    reader = FrameReader(_Bytes(b"".join(encode(f) for f in frames), step=7))
    assert (await reader.read_frame(pb.TunnelFrame)).data == b"x" * 1000
    assert (await reader.read_frame(pb.TunnelFrame)).WhichOneof("kind") == "end"
    assert await reader.read_frame(pb.TunnelFrame) is None  # clean end between frames


async def test_oversized_frame_refused_before_buffering() -> None:
    reader = FrameReader(_Bytes(encode(pb.TunnelFrame(request=1, data=b"y" * 5000))), max_frame=1024)
    with pytest.raises(FrameError, match="exceeds"):
        await reader.read_frame(pb.TunnelFrame)


async def test_truncated_frame_is_an_error_not_an_end() -> None:
    raw = encode(pb.TunnelFrame(request=1, data=b"z" * 100))
    with pytest.raises(FrameError, match="inside a frame"):
        await FrameReader(_Bytes(raw[:50])).read_frame(pb.TunnelFrame)


async def test_garbage_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        await FrameReader(_Bytes(b"\xff\xff\xff\xff\xff\xff")).read_frame(pb.TunnelFrame)
    with pytest.raises(FrameError, match="malformed"):
        await FrameReader(_Bytes(b"\x03\xff\xff\xff")).read_frame(pb.TunnelFrame)
