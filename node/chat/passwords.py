"""Salted scrypt password hashes, with their cost parameters stored beside them.

This module only computes: the salt comes from the caller (the node that accepts a request
draws it), and a hash at a production cost takes tens of milliseconds, so callers on an event
loop run these functions in a thread (hashlib.scrypt releases the GIL).

Imports node.config and the standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from node.config import ScryptCost

SALT_BYTES = 16  # what callers should draw (os.urandom / secrets.token_bytes)
DIGEST_BYTES = 32
_MAXMEM_SLACK = 1 << 20


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """scrypt(password, salt, n, r, p) -> digest; everything needed to verify a password."""

    salt: bytes
    n: int
    r: int
    p: int
    digest: bytes


def _maxmem(n: int, r: int, p: int) -> int:
    # OpenSSL needs 128*r*(n+2) bytes for V plus 128*r*p for B; the default limit (32 MiB)
    # refuses n = 2**15, r = 8, so ask for what the parameters need.
    return 128 * r * (n + p + 2) + _MAXMEM_SLACK


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r, p), dklen=dklen
    )


def hash_password(password: str, cost: ScryptCost, salt: bytes) -> PasswordHash:
    """Hash `password` with `salt` at `cost`. Slow at production cost: run it in a thread."""
    digest = _scrypt(password, salt, cost.n, cost.r, cost.p, DIGEST_BYTES)
    return PasswordHash(salt=salt, n=cost.n, r=cost.r, p=cost.p, digest=digest)


def verify_password(password: str, stored: PasswordHash) -> bool:
    """Whether `password` is the one `stored` was made from (constant-time comparison).

    Uses the cost stored with the hash, so hashes made before a cost change still verify.
    Slow at production cost: run it in a thread.
    """
    try:
        digest = _scrypt(password, stored.salt, stored.n, stored.r, stored.p, len(stored.digest))
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(digest, stored.digest)
