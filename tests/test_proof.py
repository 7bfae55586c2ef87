"""Namespace proofs: the node proves its secret to a gateway without sending it."""

from __future__ import annotations

import pytest

from tooti.store import proof, secrets


@pytest.mark.parametrize("chosen", [False, True])
def test_right_secret_passes_wrong_fails(chosen: bool) -> None:
    secret = secrets.generate_secret() if not chosen else "correct horse battery staple"
    ch, key = proof.challenge_for(secrets.hash_secret(secret, chosen=chosen))
    assert ch.scheme == ("argon2id" if chosen else "sha256")
    good = proof.answer(proof.key_for(secret, ch), ch, "acme", b"node", b"gw")
    assert proof.check(key, ch, "acme", b"node", b"gw", good)
    bad = proof.answer(proof.key_for(secret + "x", ch), ch, "acme", b"node", b"gw")
    assert not proof.check(key, ch, "acme", b"node", b"gw", bad)


def test_an_answer_is_bound_to_its_gateway_nonce_and_namespace() -> None:
    secret = secrets.generate_secret()
    stored = secrets.hash_secret(secret, chosen=False)
    ch, key = proof.challenge_for(stored)
    mac = proof.answer(proof.key_for(secret, ch), ch, "acme", b"node", b"rogue")
    # what a peer posing as a gateway collected is useless at a real gateway
    assert not proof.check(key, ch, "acme", b"node", b"real-gateway", mac)
    ch2, key2 = proof.challenge_for(stored)
    assert ch2.nonce != ch.nonce
    assert not proof.check(key2, ch2, "acme", b"node", b"rogue", mac)
    assert not proof.check(key, ch, "other", b"node", b"rogue", mac)
    assert secret.encode() not in mac


def test_hostile_argon2_parameters_are_refused() -> None:
    ch = proof.Challenge(
        b"n" * 32, "argon2id", b"s" * 16, time_cost=1000, memory_cost=1 << 30, parallelism=1, hash_len=32
    )
    with pytest.raises(ValueError):
        proof.key_for("secret", ch)
    with pytest.raises(ValueError):
        proof.key_for("secret", proof.Challenge(b"n", "md5"))
