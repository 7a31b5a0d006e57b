"""Deliberately broken cores, to prove the simulator catches real safety bugs."""

from __future__ import annotations

from collections.abc import Callable

from node.raft.core import RaftCore

BROKEN = ("commit-old-term", "forget-vote")


def _commit_by_counting_replicas(core: RaftCore) -> None:
    """Break §5.4.2: commit any entry stored on a majority, whatever its term."""

    def maybe_commit() -> bool:
        matches = sorted(
            (core._progress[v].match if v in core._progress else 0 for v in core.conf.voters),
            reverse=True,
        )
        candidate = matches[core.conf.quorum() - 1]
        if candidate > core.log.committed:
            core.log.commit_to(candidate)
            return True
        return False

    core._maybe_commit = maybe_commit  # type: ignore[method-assign]


def patch_for(name: str | None) -> tuple[Callable[[RaftCore], None] | None, bool]:
    """(a patch applied to every core at boot, whether restarts forget the vote)."""
    if name is None:
        return None, False
    if name == "commit-old-term":
        return _commit_by_counting_replicas, False
    if name == "forget-vote":
        return None, True
    raise ValueError(f"unknown broken core {name!r}; choose from {', '.join(BROKEN)}")
