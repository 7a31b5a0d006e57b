"""Deliberately broken drivers, to show the driver simulation catches the driver's own
ordering bugs (the Ready contract of node.raft.types). Each is a small subclass of the real
RaftDriver that breaks one rule, never a change to node/.

- early-ack: sends `persisted_messages` (votes, append acknowledgements) with `messages`,
  before the storage write they promise has completed;
- no-sync: writes entries and hard state but never fsyncs them;
- lying-checkpoint: believes every checkpoint of its state complete, so it compacts the log
  past what the state holds durably (issue 13: compaction only after a complete checkpoint);
  its state never checkpoints at all;
- partial-checkpoint: checkpoints, but compacts whatever the checkpoint's result: only the
  partial ones (None, about 15% of them) let the log run ahead of the state;
- lazy-vote-sync: fsyncs entries but not a hard state written alone (a vote, a new term),
  although the Ready says must_sync. Rarely caught (about 1 seed in 200): the vote is lost
  only if the power fails before the next append of the new leader syncs the WAL.

(Calling advance() before the write is not among them: the driver handles one Ready at a
time, so nothing the early advance lets the core decide leaves the node before the write
completes; the simulation rightly never catches it.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from node.driver import RaftDriver, StateMachine
from node.raft.types import Entry, HardState, Ready


class EarlyAckDriver(RaftDriver[int]):
    async def _handle_ready(self, rd: Ready) -> None:
        early = dataclasses.replace(
            rd, messages=rd.messages + rd.persisted_messages, persisted_messages=()
        )
        await super()._handle_ready(early)


class NoSyncDriver(RaftDriver[int]):
    def _persist(self, entries: Sequence[Entry], hs: HardState | None, sync: bool) -> None:
        if entries:
            self.storage.append(entries)
        if hs is not None:
            self.storage.set_hard_state(hs)


class LazyVoteSyncDriver(RaftDriver[int]):
    def _persist(self, entries: Sequence[Entry], hs: HardState | None, sync: bool) -> None:
        super()._persist(entries, hs, False)  # the base class still syncs when there are entries


class _LyingState:
    """A state whose checkpoint reports the applied index durable without making it so."""

    def __init__(self, inner: StateMachine[int]) -> None:
        self._inner = inner

    def checkpoint(self) -> int | None:
        return self._inner.applied_index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _PartialIgnoredState(_LyingState):
    """A state whose checkpoint runs, but reports the applied index even when partial."""

    def checkpoint(self) -> int | None:
        self._inner.checkpoint()
        return self._inner.applied_index


class LyingCheckpointDriver(RaftDriver[int]):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = _LyingState(self.state)


class PartialCheckpointDriver(RaftDriver[int]):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = _PartialIgnoredState(self.state)


DRIVERS: dict[str, Callable[..., RaftDriver[int]]] = {
    "real": RaftDriver,
    "early-ack": EarlyAckDriver,
    "no-sync": NoSyncDriver,
    "lazy-vote-sync": LazyVoteSyncDriver,
    "lying-checkpoint": LyingCheckpointDriver,
    "partial-checkpoint": PartialCheckpointDriver,
}
BROKEN = tuple(name for name in DRIVERS if name != "real")
