"""cluster.yaml -> frozen dataclasses: the one loader that node, supervisor and client share.

Bottom of the layer map: imports nothing from chatbooth.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """Cost parameters of scrypt password hashes; stored beside every hash."""

    n: int = 2**14
    r: int = 8
    p: int = 1


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Limits of the chat state machine. Times are in log time (leader timestamps)."""

    max_username_chars: int = 32
    max_text_chars: int = 4096
    queue_limit: int = 10_000  # undelivered (unacked) messages per recipient
    history_per_pair: int = 10_000  # most recent messages kept per conversation
    session_idle_s: int = 7 * 24 * 3600
    client_idle_s: int = 3600  # forget a client's dedup entry after this long idle
    page_size: int = 100
    max_page_size: int = 1000
