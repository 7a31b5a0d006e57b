"""Deliberately broken drivers, to show the driver simulation catches the driver's own
ordering bugs (the Ready contract of node.raft.types). Each is a small subclass of the real
RaftDriver that breaks one rule, never a change to node/.

- early-ack: sends `persisted_messages` (votes, append acknowledgements) with `messages`,
  before the storage write they promise has completed;
- no-sync: writes entries and hard state but never fsyncs them;
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

from node.driver import RaftDriver
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


DRIVERS: dict[str, Callable[..., RaftDriver[int]]] = {
    "real": RaftDriver,
    "early-ack": EarlyAckDriver,
    "no-sync": NoSyncDriver,
    "lazy-vote-sync": LazyVoteSyncDriver,
}
BROKEN = tuple(name for name in DRIVERS if name != "real")
