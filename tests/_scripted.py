"""A scripted HTTP/1.1 server for client tests: it reads each request and answers with exactly
the bytes a test gives it (well-formed, cut at awkward places, or hostile)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in chunks of ``size`` bytes (so chunk boundaries fall inside events)."""
    out = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(out) + b"0\r\n\r\n"


def json_answer(doc: dict[str, object], status: int = 200, extra: bytes = b"") -> bytes:
    body = json.dumps(doc).encode()
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


class Reader:
    """Reads the requests of one connection (head, then a Content-Length body)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream, self._buf = stream, b""

    async def request(self) -> bytes | None:
        """The next request, or None once the client closed the connection."""
        while b"\r\n\r\n" not in self._buf:
            if not await self._more():
                return None
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buf) < length:
            if not await self._more():
                return None
        body, self._buf = self._buf[:length], self._buf[length:]
        return head + b"\r\n\r\n" + body

    async def _more(self) -> bool:
        try:
            data = await self._stream.receive_some(65536)
        except trio.BrokenResourceError:
            return False
        self._buf += data
        return bool(data)


Handler = Callable[["Server", trio.abc.Stream, Reader], Awaitable[None]]


class Server:
    """A TCP server on 127.0.0.1 that runs ``handler`` on each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = 0
        self.client_closed = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.serve, listeners)

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            await self.handler(self, stream, Reader(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def until_closed(self, reader: Reader) -> None:
        """Wait for the client to close the connection (requests meanwhile are an error)."""
        assert await reader.request() is None
        self.closed_by_client += 1
        self.client_closed.set()


def answering(*pieces: bytes, then_close: bool = False) -> Handler:
    """Answer every request on a connection with ``pieces``, each its own send."""

    async def handler(server: Server, stream: trio.abc.Stream, reader: Reader) -> None:
        while (req := await reader.request()) is not None:
            server.requests.append(req)
            for piece in pieces:
                await stream.send_all(piece)
                await trio.lowlevel.checkpoint()
            if then_close:
                return
        server.closed_by_client += 1
        server.client_closed.set()

    return handler


async def start(nursery: trio.Nursery, handler: Handler) -> Server:
    server = Server(handler)
    await nursery.start(server.run)
    return server


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context that trusts only its certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
