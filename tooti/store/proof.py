"""Proving knowledge of a namespace secret without sending it.

A gateway keeps only a hash of each namespace secret (``secrets.hash_secret``). From that stored
hash it derives a *challenge*: a fresh nonce plus what the node needs to recompute the hash's
raw key (nothing for sha256; the salt and cost parameters for argon2id). The node answers

    HMAC-SHA256(key, "tooti-ns-proof/1" | nonce | namespace | node peer id | gateway peer id)

where ``key`` is the raw hash of its secret. The answer is bound to this gateway and this nonce,
so a peer posing as a gateway learns nothing it can replay elsewhere, and the secret itself
never crosses the network. (The stored hash is what the proof is checked against, so a stolen
database lets its thief pass the proof, though still not learn the secret.)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os

from argon2.low_level import Type, hash_secret_raw

_LABEL = b"tooti-ns-proof/1"


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    scheme: str  # "sha256" | "argon2id"
    salt: bytes = b""
    time_cost: int = 0
    memory_cost: int = 0
    parallelism: int = 0
    hash_len: int = 0


def challenge_for(stored_hash: str) -> tuple[Challenge, bytes]:
    """(challenge to send, raw key to check the answer with) for a stored secret hash.
    Raises ValueError for a hash in an unknown scheme."""
    nonce = os.urandom(32)
    if stored_hash.startswith("sha256$"):
        return Challenge(nonce, "sha256"), bytes.fromhex(stored_hash[len("sha256$") :])
    if stored_hash.startswith("$argon2id$"):
        # PHC string: $argon2id$v=19$m=65536,t=3,p=4$<salt b64>$<hash b64>
        _, _, _version, params, salt_b64, hash_b64 = stored_hash.split("$")
        p = dict(kv.split("=") for kv in params.split(","))
        salt, raw = _b64(salt_b64), _b64(hash_b64)
        return Challenge(nonce, "argon2id", salt, int(p["t"]), int(p["m"]), int(p["p"]), len(raw)), raw
    raise ValueError("unknown secret hash scheme")


def key_for(secret: str, ch: Challenge) -> bytes:
    """The node's side: the raw key its secret hashes to under the challenge's scheme.
    Argon2 is deliberately slow (tens of ms): call it from a worker thread."""
    if ch.scheme == "sha256":
        return hashlib.sha256(secret.encode()).digest()
    if ch.scheme == "argon2id":
        # Bounds keep a hostile "gateway" from making the node burn memory or time.
        if not (
            1 <= ch.time_cost <= 16
            and 8 <= ch.memory_cost <= 1 << 20
            and 1 <= ch.parallelism <= 16
            and 16 <= ch.hash_len <= 64
            and 8 <= len(ch.salt) <= 64
        ):
            raise ValueError("argon2 parameters out of bounds")
        return hash_secret_raw(
            secret.encode(), ch.salt, ch.time_cost, ch.memory_cost, ch.parallelism, ch.hash_len, Type.ID
        )
    raise ValueError(f"unknown proof scheme {ch.scheme!r}")


def answer(key: bytes, ch: Challenge, namespace: str, node_peer: bytes, gateway_peer: bytes) -> bytes:
    msg = b"|".join((_LABEL, ch.nonce, namespace.encode(), node_peer, gateway_peer))
    return hmac.new(key, msg, hashlib.sha256).digest()


def check(
    key: bytes, ch: Challenge, namespace: str, node_peer: bytes, gateway_peer: bytes, mac: bytes
) -> bool:
    return hmac.compare_digest(answer(key, ch, namespace, node_peer, gateway_peer), mac)


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
