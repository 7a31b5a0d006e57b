"""Picking a free TCP port on 127.0.0.1 for a node, an echo server or a test.

Standard library only.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection

from supervisor.errors import SupervisorError

LOW, HIGH = 20000, 32000  # below the ephemeral range (32768 and up here)


def free_port(avoid: Collection[int] = ()) -> int:
    """A port free on 127.0.0.1 now. Below the ephemeral range: binding port 0 and closing it
    races with outgoing connections, which take their ports from that range (TRAPS). The
    caller still retries if its own bind fails."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(LOW, HIGH)
        if port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SupervisorError(f"no free port on 127.0.0.1 in {LOW}-{HIGH}")
