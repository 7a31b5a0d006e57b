"""Salted scrypt hashes with their cost stored beside them."""

from __future__ import annotations

import hashlib

from node.chat.passwords import DIGEST_BYTES, hash_password, verify_password
from node.config import ScryptCost

from .conftest import FAST_COST


def test_the_right_password_verifies_and_a_wrong_one_does_not() -> None:
    stored = hash_password("correct horse", FAST_COST, b"0123456789abcdef")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)
    assert not verify_password("bad \ud800", stored)


def test_the_cost_and_salt_are_stored_beside_the_digest() -> None:
    stored = hash_password("pw", ScryptCost(n=2**5, r=2, p=3), b"salty")
    assert (stored.salt, stored.n, stored.r, stored.p) == (b"salty", 2**5, 2, 3)
    assert len(stored.digest) == DIGEST_BYTES
    assert stored.digest == hashlib.scrypt(b"pw", salt=b"salty", n=2**5, r=2, p=3, dklen=32)


def test_the_salt_changes_the_digest_and_the_same_inputs_do_not() -> None:
    a = hash_password("pw", FAST_COST, b"salt-a")
    b = hash_password("pw", FAST_COST, b"salt-b")
    assert a.digest != b.digest
    assert hash_password("pw", FAST_COST, b"salt-a") == a


def test_verification_uses_the_stored_cost_not_the_current_one() -> None:
    old = hash_password("pw", ScryptCost(n=2**3, r=1, p=1), b"salt")
    assert verify_password("pw", old)
    assert old.digest != hash_password("pw", FAST_COST, b"salt").digest


def test_production_costs_above_the_default_memory_limit_work() -> None:
    """n = 2**15, r = 8 needs 32 MiB, over hashlib's default maxmem."""
    stored = hash_password("pw", ScryptCost(n=2**15, r=8, p=1), b"salt")
    assert verify_password("pw", stored)
