"""Shared fixtures. Each real resource (temp data dir, free ports, processes) gets a fixture
that cleans up what it started."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the ephemeral range (TRAPS: binding port 0 races
    with outgoing connections, which use 32768 and up)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 20000-32000")
