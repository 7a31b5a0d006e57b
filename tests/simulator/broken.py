"""Deliberately broken cores, to prove the simulator catches real safety bugs.

Each is a plausible Raft bug, made by patching a RaftCore instance (never node/ itself).
TUNED are the ones the default profiles were tuned to catch; HELD_OUT were written after
the tuning and never tuned on: their catch rates are the honest measure of the search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.raft import quorum
from node.raft.core import RaftCore
from node.raft.membership import ConfChangeBusyError, apply_change
from node.raft.types import ConfChange, Entry, LogIndex, Role, Term

TUNED = (
    "commit-old-term",
    "forget-vote",
    "leader-counts-itself-before-fsync",
    "append-without-term-check",
    # membership (the "membership" profile was written for these two)
    "two-changes-at-once",
    "change-before-committing-in-term",
)
HELD_OUT = ("vote-without-log-check", "commit-past-last-new")
BROKEN = TUNED + HELD_OUT

Patch = Callable[[RaftCore], None]


def _commit_by_counting_replicas(core: RaftCore) -> None:
    """Break §5.4.2: commit any entry stored on a majority, whatever its term."""

    def maybe_commit() -> bool:
        matches = {peer: pr.match for peer, pr in core._progress.items()}
        candidate = quorum.committed_index(core.conf.voters, matches)
        if candidate > core.log.committed:
            core.log.commit_to(candidate)
            return True
        return False

    core._maybe_commit = maybe_commit  # type: ignore[method-assign]


def _count_self_before_fsync(core: RaftCore) -> None:
    """Break thesis §10.2.1: the leader counts its own entries toward the majority as soon as
    it appends them, not once its write is synced (it writes in parallel with the sends)."""
    maybe_commit = core._maybe_commit

    def counting_unsynced() -> bool:
        if core.role is Role.LEADER:
            me = core._progress[core.id]
            me.match = max(me.match, core.log.last_index())
        return maybe_commit()

    core._maybe_commit = counting_unsynced  # type: ignore[method-assign]


def _append_without_term_check(core: RaftCore) -> None:
    """Break §5.3's consistency check: a follower accepts AppendEntries when it holds an
    entry at prevLogIndex, whatever that entry's term."""
    log = core.log
    maybe_append = log.maybe_append

    def accept_any_prev(
        prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> LogIndex | None:
        mine = log.term(prev_index)
        if mine is None:
            return None
        return maybe_append(prev_index, mine, commit, entries)

    log.maybe_append = accept_any_prev  # type: ignore[method-assign]


def _vote_without_log_check(core: RaftCore) -> None:
    """Break §5.4.1: grant (pre-)votes without checking that the candidate's log is at
    least as up-to-date as the voter's."""
    core.log.is_up_to_date = lambda last_index, last_term: True  # type: ignore[method-assign]


def _commit_past_last_new(core: RaftCore) -> None:
    """Break Figure 2's AppendEntries rule 5: a follower sets its commit index to
    min(leaderCommit, its last index) instead of min(leaderCommit, index of the last new
    entry), so it may commit a stale suffix the leader never sent it."""
    log = core.log
    maybe_append = log.maybe_append

    def commit_to_last_index(
        prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> LogIndex | None:
        last_new = maybe_append(prev_index, prev_term, 0, entries)
        if last_new is not None:
            log.commit_to(min(commit, log.last_index()))
        return last_new

    log.maybe_append = commit_to_last_index  # type: ignore[method-assign]


def _two_changes_at_once(core: RaftCore) -> None:
    """Break thesis §4.1: a leader proposes a membership change while an earlier one is
    still uncommitted, so three configurations (two servers apart) may be in use at once."""

    def propose(change: ConfChange) -> tuple[LogIndex, Term]:
        core._check_may_propose()
        if core.log.term(core.log.committed) != core.term:
            raise ConfChangeBusyError("not yet committed in its term")
        return core._append_conf(
            apply_change(core.conf, change, LogIndex(core.log.last_index() + 1))
        )

    core.propose_conf_change = propose  # type: ignore[method-assign]


def _change_before_committing_in_term(core: RaftCore) -> None:
    """Break the fix to single-server changes (thesis §4.1, raft-dev 2015-07-10): a new
    leader proposes a membership change before it has committed an entry of its own term, so
    an uncommitted change of an earlier leader and its own may overlap."""

    def propose(change: ConfChange) -> tuple[LogIndex, Term]:
        core._check_may_propose()
        if core.pending_conf_index() and core.log.term(core.log.committed) == core.term:
            raise ConfChangeBusyError("a change is pending")
        return core._append_conf(
            apply_change(core.conf, change, LogIndex(core.log.last_index() + 1))
        )

    core.propose_conf_change = propose  # type: ignore[method-assign]


_PATCHES: dict[str, Patch] = {
    "commit-old-term": _commit_by_counting_replicas,
    "leader-counts-itself-before-fsync": _count_self_before_fsync,
    "append-without-term-check": _append_without_term_check,
    "vote-without-log-check": _vote_without_log_check,
    "commit-past-last-new": _commit_past_last_new,
    "two-changes-at-once": _two_changes_at_once,
    "change-before-committing-in-term": _change_before_committing_in_term,
}


def patch_for(name: str | None) -> tuple[Patch | None, bool]:
    """(a patch applied to every core at boot, whether restarts forget the vote)."""
    if name is None:
        return None, False
    if name == "forget-vote":
        return None, True
    if name in _PATCHES:
        return _PATCHES[name], False
    raise ValueError(f"unknown broken core {name!r}; choose from {', '.join(BROKEN)}")
