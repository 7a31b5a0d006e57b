"""What the attacks in tests/security share: a call that must be refused."""

from __future__ import annotations

import grpc
import pytest


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error a call (an awaitable gRPC call) must end with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value
