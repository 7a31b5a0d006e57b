"""The root of every error the supervisor raises on purpose, so that the REPL can report any of
them as a failed command and carry on.

Imports nothing (it sits under every other supervisor module).
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Something the supervisor was asked to do cannot be done; the message says why, for a
    person."""
