"""Conditions the Raft core reports to its caller. No imports beyond the standard library."""

from __future__ import annotations


class RaftError(Exception):
    """Root of every error the core raises."""


class NotLeaderError(RaftError):
    """This node cannot accept the request; `leader_hint` is the leader it knows, if any."""

    def __init__(self, leader_hint: str | None) -> None:
        self.leader_hint = leader_hint
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")


class ProposalDroppedError(RaftError):
    """The leader refuses proposals for now (a leadership transfer is in progress)."""


class InvariantError(RaftError):
    """A broken internal invariant: a bug, never a condition to handle."""
