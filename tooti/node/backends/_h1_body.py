"""Decoding an HTTP/1.1 response body from raw bytes: chunked, Content-Length, or until EOF.

Each decoder takes the raw bytes one socket read delivered and returns the body bytes they
carry (one slice, or a join when a read holds several chunks), with no per-chunk event objects.
Framing is checked strictly and every buffer is bounded, because the backend may be buggy:

* chunked: a chunk-size line is at most :data:`MAX_LINE` bytes, 1-16 hex digits optionally
  followed by a chunk extension (``;...``, ignored as RFC 9112 says), ended by exactly CRLF; the
  chunk data must be followed by exactly CRLF; trailer fields are skipped, at most
  :data:`MAX_TRAILERS` bytes of them. Only an incomplete framing line is ever held back.
* a body that goes on past its end (bytes after the last chunk or past Content-Length) is an
  error, not the start of another response.
"""

from __future__ import annotations

import re

#: Longest chunk-size line (or trailer line) accepted, CRLF excluded.
MAX_LINE = 1024
#: Most trailer bytes accepted after the last chunk.
MAX_TRAILERS = 64 * 1024

_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
# Decoder states of a chunked body.
_LINE, _DATA, _CRLF, _TRAILER, _END = range(5)


class H1Error(Exception):
    """The backend could not be reached, or broke the connection or HTTP/1.1."""


class FramingError(H1Error):
    """The body broke HTTP/1.1 framing (the message says how)."""


class Chunked:
    """``Transfer-Encoding: chunked``."""

    __slots__ = ("_held", "_left", "_state", "_trailers", "done")

    def __init__(self) -> None:
        self._state = _LINE
        self._left = 0  # data bytes still to come in the current chunk
        self._held = b""  # an incomplete framing line (or CRLF) from the previous read
        self._trailers = 0
        self.done = False

    def feed(self, raw: bytes) -> bytes:
        if self._held:
            raw, self._held = self._held + raw, b""
        elif self._state == _LINE:
            # The common case of a token stream: a read holds exactly one whole chunk.
            end = raw.find(b"\r\n", 0, 18)
            if end > 0 and not raw[:end].translate(None, _HEX_DIGITS):
                stop = end + 2 + int(raw[:end], 16)
                if len(raw) == stop + 2 and stop > end + 2 and raw[stop] == 13 and raw[stop + 1] == 10:
                    return raw[end + 2 : stop]
        out: list[bytes] = []
        i, n = 0, len(raw)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                out.append(raw if take == n else raw[i : i + take])
                i += take
                self._left -= take
                if not self._left:
                    self._state = _CRLF
            elif state == _CRLF:
                if n - i < 2:
                    self._held = raw[i:]
                    break
                if raw[i] != 13 or raw[i + 1] != 10:  # exactly CRLF
                    raise FramingError("chunk data not followed by CRLF")
                i += 2
                self._state = _LINE
            elif state == _END:
                raise FramingError("bytes after the end of the body")
            else:
                end = raw.find(b"\r\n", i, i + MAX_LINE + 2)
                if end < 0:
                    if n - i > MAX_LINE:
                        raise FramingError("chunk-size or trailer line too long")
                    self._held = raw[i:]
                    break
                line = raw[i:end]
                i = end + 2
                if state == _LINE:
                    self._start_chunk(line)
                elif not line:  # the blank line after the trailers: the body is complete
                    self._state = _END
                    self.done = True
                else:
                    self._trailers += len(line) + 2
                    if self._trailers > MAX_TRAILERS:
                        raise FramingError("too many trailer bytes")
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _start_chunk(self, line: bytes) -> None:
        match = _SIZE.fullmatch(line)
        if match is None:
            raise FramingError("chunk-size line is not hex digits")
        size = int(match.group(1), 16)
        if size:
            self._left, self._state = size, _DATA
        else:
            self._state = _TRAILER

    def eof(self) -> None:
        """The connection ended: fine only after the last chunk."""
        if not self.done:
            raise FramingError("the connection ended inside a chunked body")


class Length:
    """``Content-Length: n``."""

    __slots__ = ("done", "left")

    def __init__(self, length: int) -> None:
        self.left = length
        self.done = length == 0

    def feed(self, raw: bytes) -> bytes:
        left = self.left
        if len(raw) > left:
            raise FramingError("body longer than its Content-Length")
        self.left = left - len(raw)
        self.done = not self.left
        return raw

    def eof(self) -> None:
        if not self.done:
            raise FramingError("the connection ended before Content-Length bytes")


class UntilClose:
    """No length given (``Connection: close`` or HTTP/1.0): the body ends at EOF."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def feed(self, raw: bytes) -> bytes:
        return raw

    def eof(self) -> None:
        self.done = True


Decoder = Chunked | Length | UntilClose
