"""Deliberately broken drivers, to show the driver simulation catches the driver's own
ordering bugs (the Ready contract of node.raft.types). Each is a small subclass of the real
RaftDriver that breaks one rule, never a change to node/.

- early-ack: sends `persisted_messages` (votes, append acknowledgements) with `messages`,
  before the storage write they promise has completed;
- no-sync: writes entries and hard state but never fsyncs them;
- lazy-vote-sync: fsyncs entries but not a hard state written alone (a vote, a new term),
  although the Ready says must_sync;
- advance-early: tells the core its write is durable (advance) before making it so, so a
  leader counts itself toward the majority too soon (thesis §10.2.1).
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


class AdvanceEarlyDriver(RaftDriver[int]):
    async def _handle_ready(self, rd: Ready) -> None:
        self.core.advance(rd)
        await super()._handle_ready(rd)
        # super() advances again: advance is idempotent for entries already stable


DRIVERS: dict[str, Callable[..., RaftDriver[int]]] = {
    "real": RaftDriver,
    "early-ack": EarlyAckDriver,
    "no-sync": NoSyncDriver,
    "lazy-vote-sync": LazyVoteSyncDriver,
    "advance-early": AdvanceEarlyDriver,
}
BROKEN = tuple(name for name in DRIVERS if name != "real")
