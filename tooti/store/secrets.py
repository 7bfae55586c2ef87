"""Secret generation, hashing and constant-time verification.

Two hashing schemes are used, and the scheme is always recorded in the stored
hash string so that verification never has to guess:

* ``sha256$<hex>`` for secrets *we* generated.  They carry >= 190 bits of
  entropy, so a fast hash is enough: brute force is hopeless regardless of
  hash speed, and a fast hash keeps per-request key checks cheap.
* ``$argon2id$...`` (argon2-cffi's PHC string) for secrets a human chose.
  Those may be guessable, so they get a slow, memory-hard hash.

Everything here is synchronous and CPU-bound; callers on the trio loop must
run :func:`hash_secret` / :func:`verify_secret` in a worker thread when the
scheme may be argon2.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets as _stdlib_secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "API_KEY_PREFIX",
    "generate_api_key",
    "generate_secret",
    "hash_secret",
    "parse_api_key",
    "verify_secret",
]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Lower-case alphanumerics only: prefixes are typed on command lines and read
# aloud, and must never contain the "-" separator.
_PREFIX_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

#: Every API key starts with this marker, which makes leaked keys greppable.
API_KEY_PREFIX = "tt"
_SECRET_CHARS = 43  # 43 * log2(62) ~= 256 bits
_PREFIX_CHARS = 10  # ~51 bits: collisions are retried, not prevented
_SHA256 = "sha256$"

# One hasher for the process: its parameters are argon2-cffi's RFC 9106
# "low memory" defaults (argon2id, 64 MiB, t=3), ~50 ms per hash.
_argon2 = PasswordHasher()

assert _SECRET_CHARS * math.log2(len(_BASE62)) >= 190


def _random_string(alphabet: str, length: int) -> str:
    return "".join(_stdlib_secrets.choice(alphabet) for _ in range(length))


def generate_secret() -> str:
    """Return a fresh base62 secret with ~256 bits of entropy (43 chars)."""
    return _random_string(_BASE62, _SECRET_CHARS)


def generate_api_key() -> tuple[str, str]:
    """Return ``(prefix, plaintext)`` for a new API key.

    The plaintext has the form ``tt-<prefix>-<secret>``: the prefix is the
    public identifier (safe to log and show in listings), the secret part
    carries ~256 bits of entropy.
    """
    prefix = _random_string(_PREFIX_ALPHABET, _PREFIX_CHARS)
    return prefix, f"{API_KEY_PREFIX}-{prefix}-{generate_secret()}"


def parse_api_key(plaintext: str) -> str | None:
    """Return the prefix of a well-formed API key, or None if malformed.

    Only the shape is checked; whether the key is genuine is up to the store.
    """
    parts = plaintext.split("-", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
        return None
    prefix, secret = parts[1], parts[2]
    if not prefix or any(c not in _PREFIX_ALPHABET for c in prefix):
        return None
    if not secret or any(c not in _BASE62 for c in secret):
        return None
    return prefix


def hash_secret(secret: str, *, chosen: bool) -> str:
    """Hash ``secret`` for storage.

    ``chosen=True`` means a human picked it: argon2id (slow; call from a
    worker thread).  ``chosen=False`` means it came from this module's
    generators: a plain sha256 digest.
    """
    if chosen:
        return _argon2.hash(secret)
    return _SHA256 + hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, stored_hash: str) -> bool:
    """Return whether ``secret`` matches ``stored_hash``, in constant time.

    Unknown schemes and corrupt hashes verify as False rather than raising:
    a bad row must lock its owner out, never let anyone in.
    """
    if stored_hash.startswith(_SHA256):
        digest = _SHA256 + hashlib.sha256(secret.encode()).hexdigest()
        # compare_digest on bytes: its time depends only on the length, which
        # is fixed for sha256 hex digests.
        return hmac.compare_digest(digest.encode(), stored_hash.encode())
    if stored_hash.startswith("$argon2"):
        try:
            return _argon2.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return False
