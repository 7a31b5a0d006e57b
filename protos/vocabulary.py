"""The wire vocabulary that both sides of chat.proto share, defined once (as etcd's
api/v3rpc/rpctypes): what a field's value must look like where the proto's types cannot say.

Imports the standard library only.
"""

from __future__ import annotations

import secrets
from typing import Final

# A session token: 32 random bytes the client draws at Login, as 64 lowercase hex digits. The
# cluster keeps only its SHA-256 and never sends it back.
TOKEN_BYTES: Final = 32


def new_session_token() -> str:
    """A fresh session token for a LoginRequest."""
    return secrets.token_hex(TOKEN_BYTES)
