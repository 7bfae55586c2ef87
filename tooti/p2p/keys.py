"""Ed25519 keys as tooti writes them, and the signatures that bind them to a context.

Two kinds of credential use this module:

* a **namespace key**: its private half stays on the namespace's nodes, the store keeps only
  the public half; a node proves membership by signing a gateway's fresh challenge;
* the **network key**: its private half stays with the operator, who signs gateway
  certificates with it (``tooti.p2p.membership``).

Text forms are ``<kind>:<base64url of the 32 raw bytes>`` so that a key pasted into the wrong
place is refused by kind, not misread. Every signature covers a domain label and
length-prefixed fields, so a signature made for one purpose can never verify for another.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

NAMESPACE_PRIVATE = "tooti-ns-key-v1"
NAMESPACE_PUBLIC = "tooti-ns-pub-v1"
NETWORK_PRIVATE = "tooti-net-key-v1"
NETWORK_PUBLIC = "tooti-net-pub-v1"


class KeyFormatError(ValueError):
    """A key's text is not of the expected kind or does not decode to 32 bytes."""


def generate(private_kind: str) -> str:
    """A new private key in text form of ``private_kind``."""
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return _text(private_kind, raw)


def public_of(private_text: str, private_kind: str, public_kind: str) -> str:
    """The text form of the public half of ``private_text``."""
    key = _private(private_text, private_kind)
    return _text(public_kind, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign(private_text: str, private_kind: str, label: bytes, *fields: bytes) -> bytes:
    """Sign ``fields`` under the domain ``label`` (64-byte Ed25519 signature)."""
    return _private(private_text, private_kind).sign(framed(label, *fields))


def verify(public_text: str, public_kind: str, signature: bytes, label: bytes, *fields: bytes) -> bool:
    """True when ``signature`` is ``public_text``'s signature of ``fields`` under ``label``.
    A malformed key or signature is simply not valid: this never raises for bad input."""
    try:
        key = Ed25519PublicKey.from_public_bytes(_raw(public_text, public_kind))
        key.verify(bytes(signature), framed(label, *fields))
    except (InvalidSignature, KeyFormatError, ValueError):
        return False
    return True


def check_public(public_text: str, public_kind: str) -> str:
    """``public_text`` normalised, or KeyFormatError."""
    return _text(public_kind, _raw(public_text, public_kind))


def public_raw(public_text: str, public_kind: str) -> bytes:
    """The 32 raw bytes of a public key in text form (KeyFormatError if it is not one)."""
    return _raw(public_text, public_kind)


def public_text(raw: bytes, public_kind: str) -> str:
    """The text form of 32 raw public-key bytes."""
    if len(raw) != 32:
        raise KeyFormatError("key must be 32 bytes")
    return _text(public_kind, raw)


def same_key(a: str, b: str) -> bool:
    return hmac.compare_digest(a.strip().encode(), b.strip().encode())


# -- namespace membership ---------------------------------------------------------------------

_NS_LABEL = b"tooti/namespace-proof/2"


def prove_namespace(
    private_text: str, nonce: bytes, namespace: str, node_peer: bytes, gateway_peer: bytes
) -> bytes:
    """A node's answer to a gateway's challenge: bound to the nonce, the namespace, this node
    and that gateway, so it is worth nothing to anyone else or later."""
    return sign(
        private_text, NAMESPACE_PRIVATE, _NS_LABEL, nonce, namespace.encode(), node_peer, gateway_peer
    )


def check_namespace_proof(
    public_text: str, signature: bytes, nonce: bytes, namespace: str, node_peer: bytes, gateway_peer: bytes
) -> bool:
    return verify(
        public_text,
        NAMESPACE_PUBLIC,
        signature,
        _NS_LABEL,
        nonce,
        namespace.encode(),
        node_peer,
        gateway_peer,
    )


# -- internals --------------------------------------------------------------------------------


def framed(label: bytes, *fields: bytes) -> bytes:
    """``label`` followed by each field with a 4-byte length: the bytes every signature here
    covers, so no two different field lists can produce the same message."""
    out = bytearray(label)
    for f in fields:
        out += len(f).to_bytes(4, "big") + f
    return bytes(out)


def _text(kind: str, raw: bytes) -> str:
    return f"{kind}:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def _raw(text: str, kind: str) -> bytes:
    prefix, sep, body = text.strip().partition(":")
    if not sep or prefix != kind:
        raise KeyFormatError(f"expected a key of kind '{kind}'")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise KeyFormatError("key is not base64url") from None
    if len(raw) != 32:
        raise KeyFormatError("key must be 32 bytes")
    return raw


def _private(text: str, kind: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_raw(text, kind))
