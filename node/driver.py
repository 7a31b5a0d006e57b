"""The driver: the only code that knows time, disk and sockets. It ticks the Raft core,
persists what a Ready asks (one fsync per batch: group commit), sends messages through the
transport, applies committed entries to the chat state machine, and resolves the futures of
proposals and linearizable reads.

It follows the Ready contract of node.raft.types exactly: messages first, then the write
(in a single storage thread, so writes land in order), then persisted_messages, then
advance(). Committed entries go to an apply queue: one apply thread takes them in batches, one
transaction each (node.chat.state), and only after a batch's COMMIT do its proposals resolve,
its results reach the listeners and the applied index that read barriers wait on advance.
Slow work (storage, the state's copies and checkpoints) runs off the event loop.

The state machine keeps its state durably itself (DESIGN, "State machine storage"), so the
log is compacted without copying it: the state is checkpointed on the apply thread, and only
if that checkpoint was complete is the log compacted, to the applied index read just before it
(B: the state holds it durably), the storage recording the snapshot's metadata only
(Storage.compact). After a crash the state may be behind the log (a power cut returns the
database to a commit at or after its last complete checkpoint), never behind B: the node
replays the log from the state's applied index. A follower that needs a snapshot gets a
consistent copy of the state made when it is asked for, at some applied index A >= B (every
entry up to A is committed, so the follower's log will agree with it); the copy is kept for the
next follower while A >= the snapshot's index. A follower installs it (after the storage holds
it, so that a crash before the state switches is repaired at start from that file) and skips
the entries up to A that the leader then sends.

Imports the core, storage, chat, transport and config; nothing of the gRPC chat service.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from random import Random
from typing import Any, Generic, Protocol, TypeVar

from node.config import ClusterConfig
from node.raft.core import RaftConfig, RaftCore
from node.raft.errors import InvariantError, NotLeaderError, ProposalDroppedError, RaftError
from node.raft.membership import decode_conf
from node.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Message,
    NodeId,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)
from node.seams import (
    Clock,
    Executor,
    FileSource,
    SnapshotInvalidError,
    SnapshotSource,
    SystemClock,
    ThreadExecutor,
    Transport,
)
from node.storage import Storage

logger = logging.getLogger(__name__)

R = TypeVar("R")
MAX_APPLY_BATCH = 512  # committed entries applied in one transaction at most
R_co = TypeVar("R_co", covariant=True)


class StateMachine(Protocol[R_co]):
    """What the driver applies committed entries to (hashicorp/raft's FSM), kept durably by
    itself. The chat state (node.chat.state.ChatState) is the one chatbooth runs.

    apply_batch, checkpoint and install run on the apply thread, one at a time; copy_to and
    validate_copy on another thread while applies go on; applied_index and digest_at anywhere.
    """

    @property
    def applied_index(self) -> int: ...  # the last entry applied by the writer

    def apply_batch(
        self, entries: Sequence[tuple[int, bytes | None]], conf: str | None = None
    ) -> Sequence[R_co | None]:
        """One transaction: (index, data or None for an entry with nothing for us); entries
        at or below applied_index are skipped; one result per entry (None: no result).
        `conf`: the membership as of the batch's last entry (a CONFIG entry's data, as
        text), stored in the same transaction; None: unchanged by the batch."""
        ...

    def checkpoint(self) -> int | None: ...  # the applied index made durable; None: partial

    def copy_to(self, dest: Path) -> int: ...  # a consistent copy, fsynced: its applied index

    def validate_copy(self, path: Path) -> int: ...  # ValueError unless install() would take it

    def install(self, path: Path) -> None: ...  # replace the state by the copy at `path`

    def digest_at(self) -> tuple[int, str]: ...  # (applied index, digest) of committed state


class NodeError(Exception):
    """Root of the errors the driver reports to the services."""


class NoQuorumError(NodeError):
    """No leader is known: this node cannot reach a majority."""

    def __init__(self) -> None:
        super().__init__("no majority reachable")


class OutcomeUnknownError(NodeError):
    """Leadership was lost (or the deadline passed) before the entry was applied: it may or
    may not commit. The client retries with the same request id; the dedup table keeps it once."""


class FatalNodeError(NodeError):
    """The node cannot go on safely (its disk failed); it must stop."""


@dataclass(slots=True)
class _Pending(Generic[R]):
    term: int
    future: asyncio.Future[R]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    role: Role
    term: int
    leader: NodeId | None
    commit_index: int
    applied_index: int
    snapshot_index: int
    last_index: int
    digest: str
    last_contact_ms: int = -1  # since the leader was last heard (0: this node leads; -1: never)
    leader_changes: int = 0  # the known leader changed to another node, since start


class RaftDriver(Generic[R]):
    def __init__(
        self,
        *,
        node_id: NodeId,
        config: ClusterConfig,
        storage: Storage,
        state: StateMachine[R],
        transport: Transport,
        rng: Random | None = None,
        clock: Clock | None = None,
        storage_executor: Executor | None = None,
        cpu_executor: Executor | None = None,
        apply_executor: Executor | None = None,
        spool_dir: Path | None = None,
        conf: ConfState | None = None,
    ) -> None:
        """`storage_executor` and `apply_executor` must each run their calls one at a time, in
        order (the writes land in the order the Ready contract asks for; batches in log order);
        the defaults are threads and the real clock. `spool_dir` (default: the storage's) is a
        real directory for the state's copies and snapshots in transit: SQLite, and the
        transports, write them outside the storage's file layer. `conf` is the configuration
        before any snapshot or CONFIG entry: the one the cluster formed with (the member
        record's), empty for a member that joins; by default cluster.yaml's nodes (tests)."""
        self.id = node_id
        self.config = config
        self.storage = storage
        self.state = state
        self.clock: Clock = clock or SystemClock()
        init = storage.initial_state()
        self._spool_dir = spool_dir if spool_dir is not None else storage.spool_dir
        self._spool_seq = 0
        if init.snapshot is not None and state.applied_index < init.snapshot.index:
            self._restore_from_snapshot(init.snapshot)
        timings = config.raft
        self.core = RaftCore(
            RaftConfig(
                node_id=node_id,
                heartbeat_ticks=timings.heartbeat_ticks,
                election_ticks_min=timings.election_ticks_min,
                election_ticks_max=timings.election_ticks_max,
                max_append_bytes=timings.max_append_bytes,
                max_inflight=timings.max_inflight,
                preferred_leader=config.leader == node_id,
            ),
            rng or Random(),
            conf=conf if conf is not None else ConfState(tuple(NodeId(n) for n in config.node_ids)),
            hard_state=init.hard_state,
            snapshot=init.snapshot,
            entries=init.entries,
        )
        logger.info(
            "%s starting at term %d: log %d..%d, commit %d",
            node_id,
            init.hard_state.term,
            self.core.log.first_index(),
            self.core.log.last_index(),
            init.hard_state.commit,
        )
        self._tick_s = timings.tick_ms / 1000
        self._storage_pool: Executor = storage_executor or ThreadExecutor(1, f"{node_id}-storage")
        self.cpu_pool: Executor = cpu_executor or ThreadExecutor(2, f"{node_id}-cpu")
        self._apply_pool: Executor = apply_executor or ThreadExecutor(1, f"{node_id}-apply")
        self.transport = transport
        self._wake = asyncio.Event()
        # Writes (resolved with R) and membership changes (with their ConfState), by index.
        self._proposals: dict[int, _Pending[Any]] = {}
        self._deadlines: list[tuple[float, int, int]] = []  # heap of (deadline, index, term)
        self._read_seq = 0
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._apply_listeners: list[Callable[[R], None]] = []
        self._leadership_listeners: list[Callable[[], None]] = []
        self._conf_listeners: list[Callable[[ConfState], None]] = []
        self._conf_seen: ConfState | None = None  # what the listeners last heard
        # The snapshot the core took from the leader (a file), until the Ready that installs it.
        self._incoming_snapshot: tuple[SnapshotMeta, Path] | None = None
        # The last copy of the state made for a follower, and the applied index it holds.
        self._outgoing_copy: tuple[int, Path] | None = None
        # A compaction (checkpoint, store), a copy for a follower and an install from the
        # leader never run at once; each apply batch and an install never run at once either.
        self._snapshot_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._apply_queue: deque[Entry] = deque()  # committed, not yet applied
        self._apply_wake = asyncio.Event()
        # The applied index readers may rely on: advanced only after the batch's COMMIT.
        self.applied_index = state.applied_index
        self._snapshotting = False
        self._snapshot_due = 0  # after a partial checkpoint, the applied index to try again at
        self._applied_bytes_since_snapshot = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.fatal: BaseException | None = None
        self.stopped = asyncio.Event()
        self.soft = SoftState(Role.FOLLOWER, None, self.core.term)
        self._leader_heard: float | None = None  # monotonic time of the leader's last message
        self._last_leader: NodeId | None = None  # the last leader known (None between them)
        self.leader_changes = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.transport.start(self)
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="raft-ticks"))
        self._tasks.append(asyncio.create_task(self._ready_loop(), name="raft-ready"))
        self._tasks.append(asyncio.create_task(self._apply_loop(), name="raft-apply"))

    async def stop(self) -> None:
        """Finish the write and apply under way, then stop (SIGTERM).

        Proposals still waiting are in the log already and may yet commit on the others:
        they fail with OutcomeUnknownError, never with "nothing happened"."""
        self._stopping = True
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()
        self._fail_all(OutcomeUnknownError("the node stopped before the write was applied"))
        self._drop_outgoing_copy()
        self._storage_pool.shutdown()
        self.cpu_pool.shutdown()
        self._apply_pool.shutdown()
        self.stopped.set()

    def crash(self) -> None:
        """Stop at once, as a crash would: nothing more is written, sent or applied. For tests
        that run drivers in one event loop; waiting proposals get OutcomeUnknownError."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        self._fail_all(OutcomeUnknownError("the node crashed before the write was applied"))
        self.stopped.set()

    def _drop_outgoing_copy(self) -> None:
        """Senders still reading it keep their own file handles."""
        if self._outgoing_copy is not None:
            self._outgoing_copy[1].unlink(missing_ok=True)
            self._outgoing_copy = None

    def _fail_fatally(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            logger.critical("%s cannot go on: %s", self.id, exc)
        self.stopped.set()

    # ------------------------------------------------------------------ queries

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    @property
    def leader(self) -> NodeId | None:
        return self.core.leader

    def status(self) -> NodeStatus:
        """The core's view and the applied index, without the digest (status_with_digest)."""
        c = self.core
        return NodeStatus(
            node_id=self.id,
            role=c.role,
            term=c.term,
            leader=c.leader,
            commit_index=c.log.committed,
            applied_index=self.applied_index,
            snapshot_index=c.log.snapshot_index(),
            last_index=c.log.last_index(),
            digest="",
            last_contact_ms=self._last_contact_ms(),
            leader_changes=self.leader_changes,
        )

    def _note_leader(self) -> None:
        """After each input to the core: count a change to another leader (not to none), as
        etcd's leader_changes_seen does."""
        leader = self.core.leader
        if leader != self._last_leader:
            if leader is not None:
                self.leader_changes += 1
            self._last_leader = leader

    def _last_contact_ms(self) -> int:
        if self.core.role is Role.LEADER:
            return 0
        if self._leader_heard is None:
            return -1
        return int((self.clock.monotonic() - self._leader_heard) * 1000)

    def committed_conf(self) -> ConfState:
        """The membership as of the commit index (a change still in the log not included)."""
        core = self.core
        return core.conf_at(core.log.committed)

    async def status_with_digest(self) -> NodeStatus:
        """status() with the state's digest and the applied index it is the digest of, read
        together from the committed state: one row, however large the state (the digest is
        kept by apply, never computed by a scan)."""
        applied, digest = self.state.digest_at()
        return replace(self.status(), applied_index=applied, digest=digest)

    def add_apply_listener(self, listener: Callable[[R], None]) -> None:
        self._apply_listeners.append(listener)

    def add_leadership_listener(self, listener: Callable[[], None]) -> None:
        """Called when this node stops being the leader (or is stopping)."""
        self._leadership_listeners.append(listener)

    def add_conf_listener(self, listener: Callable[[ConfState], None]) -> None:
        """Called with the configuration in force whenever it changes: a CONFIG entry reached
        the log (or was truncated from it), or a snapshot was installed (thesis §4.1: in
        force once in the log, committed or not)."""
        self._conf_listeners.append(listener)

    def _tell_conf(self) -> None:
        conf = self.core.conf
        if conf == self._conf_seen:
            return
        self._conf_seen = conf
        for listener in list(self._conf_listeners):
            listener(conf)

    # ------------------------------------------------------------------ requests

    def require_leader(self) -> None:
        if self._stopping or self.fatal is not None:
            raise NotLeaderError(None)
        if self.core.role is not Role.LEADER:
            if self.core.leader is None:
                raise NoQuorumError()
            raise NotLeaderError(self.core.leader)

    async def wait_for_leader(self, timeout_s: float) -> bool:
        """Wait (at most timeout_s) until some leader is known: a node that just started, or
        whose leader just died, learns the new one within an election timeout."""
        deadline = self.clock.monotonic() + timeout_s
        while self.core.leader is None and not self._stopping:
            if self.clock.monotonic() >= deadline:
                return False
            await self.clock.sleep(self._tick_s)
        return self.core.leader is not None

    async def wait_caught_up(self, timeout_s: float) -> None:
        """Return once this leader has committed an entry of its own term (so its commit index
        covers everything committed before it) and applied through its commit index: its state
        then answers "does this session exist?" truly. NoQuorumError if not within timeout_s;
        NotLeaderError if it is not the leader."""
        deadline = self.clock.monotonic() + timeout_s
        # An entry of this term committed: once per term, so a poll is cheap enough.
        while True:
            self.require_leader()
            log = self.core.log
            committed = log.committed
            if log.term(committed) == self.core.term:
                break
            if self.clock.monotonic() >= deadline:
                raise NoQuorumError()
            await self.clock.sleep(self._tick_s)
        # Applied through the commit index as the caller found it: what committed later is
        # concurrent with the call. Woken by the batch's COMMIT, not by a tick: under load
        # the commit index moves on all the time, and chasing it cost each write a tick.
        if self.applied_index >= committed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._apply_waiters.append((committed, waiter))
        timer = asyncio.ensure_future(self.clock.sleep(deadline - self.clock.monotonic()))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not waiter.done():
            raise NoQuorumError()
        self.require_leader()

    @property
    def election_timeout_s(self) -> float:
        return self.config.raft.election_timeout_ms[1] / 1000

    async def propose(self, data: bytes, timeout_s: float) -> R:
        """Replicate `data` and apply it; the result of applying it.

        Raises NotLeaderError / NoQuorumError before proposing (nothing happened), and
        OutcomeUnknownError after (it may still commit)."""
        self.require_leader()
        try:
            index, term = self.core.propose(data)
        except ProposalDroppedError as exc:
            raise NotLeaderError(None) from exc
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._proposals[index] = _Pending(term, future)
        # One heap swept every tick, rather than a timer per proposal (the hot path).
        heapq.heappush(self._deadlines, (self.clock.monotonic() + timeout_s, index, term))
        self._wake.set()
        return await future

    async def change_membership(self, change: ConfChange, timeout_s: float) -> ConfState:
        """Propose one single-server membership change (node.raft.membership); the new
        configuration once its CONFIG entry is committed and applied.

        Raises NotLeaderError / NoQuorumError, ConfChangeBusyError (an earlier change is
        uncommitted, or this leader has not yet committed in its term: retry) and
        ConfChangeError (an impossible change) before proposing, when nothing happened; and
        OutcomeUnknownError after (it may still commit: read the membership to find out)."""
        self.require_leader()
        index, term = self.core.propose_conf_change(change)
        future: asyncio.Future[ConfState] = asyncio.get_running_loop().create_future()
        self._proposals[index] = _Pending(term, future)
        heapq.heappush(self._deadlines, (self.clock.monotonic() + timeout_s, index, term))
        self._wake.set()
        return await future

    def _expire_proposals(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, index, term = heapq.heappop(self._deadlines)
            pending = self._proposals.get(index)
            if pending is not None and pending.term == term:
                del self._proposals[index]
                if not pending.future.done():
                    pending.future.set_exception(
                        OutcomeUnknownError(
                            "the deadline passed before the write was applied; it may still commit"
                        )
                    )

    async def read_barrier(self, timeout_s: float) -> None:
        """Linearizable reads (thesis §6.4): returns once this leader has confirmed its
        leadership after the call and the state machine has applied the read index."""
        self.require_leader()
        self._read_seq += 1
        request = self._read_seq
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._reads[request] = future
        deadline = loop.time() + timeout_s
        try:
            self.core.read_index(request)
            self._wake.set()
            index = await asyncio.wait_for(future, timeout_s)
            if self.applied_index < index:
                waiter: asyncio.Future[None] = loop.create_future()
                self._apply_waiters.append((index, waiter))
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise NoQuorumError() from None
        finally:
            self._reads.pop(request, None)

    def transfer_leadership(self, target: NodeId) -> None:
        self.core.transfer_leadership(target)
        self._wake.set()

    # ------------------------------------------------------------------ inbound

    def step(self, m: Message) -> None:
        """A message from a peer. A message the core finds impossible is dropped with a
        warning; a broken invariant of our own stops the node (never just that RPC)."""
        if self._stopping or self.fatal is not None:
            return
        try:
            self.core.step(m)
        except InvariantError as exc:
            self._fail_fatally(exc)
            return
        except RaftError as exc:
            logger.warning("%s dropped a %s from %s: %s", self.id, m.type.name, m.sender, exc)
            return
        if m.sender == self.core.leader and m.term == self.core.term:
            self._leader_heard = self.clock.monotonic()
        self._note_leader()
        self._wake.set()

    @property
    def snapshot_spool(self) -> Path:
        """Where a transport writes a snapshot it is receiving (beside the snapshots)."""
        return self._spool_dir

    def _spool_path(self, what: str) -> Path:
        self._spool_seq += 1
        path = self._spool_dir / f"{what}-{self._spool_seq}.db"
        path.unlink(missing_ok=True)  # a leftover of an earlier process
        return path

    async def receive_snapshot(self, m: Message, path: Path) -> None:
        """An InstallSnapshot from the leader, received whole in the file `path`. It is checked
        to install before the core sees it, so a bad snapshot is never made durable (a durable
        crash loop). Raises SnapshotInvalidError if it does not. The file is taken (renamed)
        only if the core is installing it."""
        meta = m.snapshot
        if meta is None or self._stopping:
            return
        try:
            index = await self.cpu_pool.run(self.state.validate_copy, path)
            if index < meta.index:  # a copy made later than the snapshot it serves is sound
                raise ValueError(f"the database holds index {index}, the message says {meta.index}")
        except ValueError as exc:
            logger.error("%s refused snapshot %d from %s: %s", self.id, meta.index, m.sender, exc)
            raise SnapshotInvalidError(str(exc)) from None
        self.step(m)
        if self.core.pending_snapshot == meta:
            kept = self._spool_path("incoming")
            path.rename(kept)
            if self._incoming_snapshot is not None:
                self._incoming_snapshot[1].unlink(missing_ok=True)
            self._incoming_snapshot = (meta, kept)

    # TransportEvents

    def on_unreachable(self, peer: NodeId) -> None:
        self.core.report_unreachable(peer)
        self._wake.set()

    def on_connected(self, peer: NodeId) -> None:
        # The bootstrap hint: campaign the moment a peer can hear us, not at the next retry.
        if self.core.bootstrapping:
            self.core.campaign()
            self._wake.set()

    def on_snapshot_sent(self, peer: NodeId, ok: bool) -> None:
        self.core.report_snapshot(peer, ok=ok)
        self._wake.set()

    def peer_confs(self) -> tuple[ConfState, ...]:
        latest = self.core.conf
        committed = self.core.conf_at(max(self.core.log.committed, self.core.log.snapshot_index()))
        return (latest,) if committed == latest else (latest, committed)

    def own_incarnation(self) -> int:
        """From the member record, which node.__main__ never starts without; a storage that
        has none is an initial member's (the driver-level tests)."""
        member = self.storage.member
        return 0 if member is None else member.incarnation

    async def open_snapshot(self, meta: SnapshotMeta) -> SnapshotSource:
        if not self.storage.snapshot_held_by_state():
            reader = await self._storage_pool.run(self.storage.open_snapshot)
            if reader is None or reader.meta.index != meta.index:
                if reader is not None:
                    reader.close()
                raise NodeError(f"snapshot {meta.index} is no longer on disk")
            return reader
        async with self._snapshot_lock:  # an install would switch the database under the copy
            if self._outgoing_copy is None or self._outgoing_copy[0] < meta.index:
                self._drop_outgoing_copy()
                path = self._spool_path("outgoing")
                started = self.clock.monotonic()
                index = await self.cpu_pool.run(self.state.copy_to, path)
                self._outgoing_copy = (index, path)
                logger.info(
                    "%s copied its state at index %d for snapshot %d: %d bytes in %.0f ms",
                    self.id,
                    index,
                    meta.index,
                    path.stat().st_size,
                    (self.clock.monotonic() - started) * 1000,
                )
            return FileSource(self._outgoing_copy[1])

    # ------------------------------------------------------------------ the loops

    async def _tick_loop(self) -> None:
        clock = self.clock
        next_tick = clock.monotonic()
        while not self._stopping:
            next_tick += self._tick_s
            delay = next_tick - clock.monotonic()
            if delay < 0:  # we were paused or starved: tick once and start afresh
                next_tick = clock.monotonic()
                delay = 0
            await clock.sleep(delay)
            self._expire_proposals(clock.monotonic())
            self.core.tick()
            self._note_leader()
            self._wake.set()

    async def _ready_loop(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                while self.core.has_ready() and not self._stopping:
                    await self._handle_ready(self.core.ready())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail_fatally(exc)

    async def _handle_ready(self, rd: Ready) -> None:
        self._tell_conf()  # first: the links to a member just added carry this Ready's messages
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        self._send(rd.messages)
        if rd.snapshot is not None:
            await self._install_snapshot(rd.snapshot)
        if rd.committed_entries:
            self._apply_queue.extend(rd.committed_entries)
            self._apply_wake.set()
        if rd.entries or rd.hard_state is not None:
            await self._storage_pool.run(self._persist, rd.entries, rd.hard_state, rd.must_sync)
        self._send(rd.persisted_messages)
        self.core.advance(rd)
        for rs in rd.read_states:
            future = self._reads.get(rs.request)
            if future is not None and not future.done():
                future.set_result(rs.index)

    def _persist(self, entries: Sequence[Entry], hs: HardState | None, sync: bool) -> None:
        if entries:
            self.storage.append(entries)
        if hs is not None:
            self.storage.set_hard_state(hs)
        if sync or entries:
            self.storage.sync()

    def _send(self, messages: Sequence[Message]) -> None:
        for m in messages:
            self.transport.send(m)

    def _on_soft_state(self, soft: SoftState) -> None:
        was_leader = self.soft.role is Role.LEADER
        self.soft = soft
        self._note_leader()
        if soft.role is Role.LEADER:
            logger.info("%s became leader at term %d", self.id, soft.term)
        elif was_leader:
            logger.info("%s lost leadership at term %d", self.id, soft.term)
            self._fail_uncommitted(
                OutcomeUnknownError("leadership was lost before the write was applied")
            )
            for listener in list(self._leadership_listeners):
                listener()

    def _fail_uncommitted(self, exc: Exception) -> None:
        """Leadership lost: what this node knows committed will be applied here and resolved
        then (a leader that removed itself steps down the moment its removal commits); the
        rest may or may not commit under the next leader."""
        committed = self.core.log.committed
        for index in [i for i in self._proposals if i > committed]:
            pending = self._proposals.pop(index)
            if not pending.future.done():
                pending.future.set_exception(exc)
        # The kept ones keep their deadlines (in _deadlines), should they never be applied.
        self._fail_reads()

    def _fail_all(self, exc: Exception) -> None:
        proposals, self._proposals = self._proposals, {}
        self._deadlines = []
        for p in proposals.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self._fail_reads()

    def _fail_reads(self) -> None:
        reads, self._reads = self._reads, {}
        for f in reads.values():
            if not f.done():
                f.set_exception(NoQuorumError())

    # ------------------------------------------------------------------ applying

    async def _apply_loop(self) -> None:
        try:
            while not self._stopping:
                await self._apply_wake.wait()
                self._apply_wake.clear()
                while self._apply_queue and not self._stopping:
                    await self._apply_next_batch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail_fatally(exc)

    async def _apply_next_batch(self) -> None:
        async with self._apply_lock:
            queue = self._apply_queue
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_APPLY_BATCH))]
            batch = [e for e in batch if e.index > self.applied_index]
            if not batch:
                return
            items = [(e.index, e.data if e.kind is EntryKind.NORMAL else None) for e in batch]
            confs = [e.data for e in batch if e.kind is EntryKind.CONFIG]
            conf = confs[-1].decode() if confs else None
            results = await self._apply_pool.run(self.state.apply_batch, items, conf)
            self._applied(batch, results)
        self._maybe_snapshot()

    def _applied(self, batch: Sequence[Entry], results: Sequence[R | None]) -> None:
        """After the batch's COMMIT: resolve its proposals, tell the listeners, and advance
        the applied index that read barriers wait on."""
        for e, result in zip(batch, results, strict=True):  # past applied_index, in order
            self.applied_index = LogIndex(e.index)
            if e.kind is EntryKind.NORMAL:
                self._applied_bytes_since_snapshot += len(e.data)
            pending = self._proposals.pop(e.index, None)
            if pending is not None and not pending.future.done():
                # The same index and term: our entry (log matching). A CONFIG entry's value
                # is the configuration it puts in force; a write's, what the state returned.
                value = decode_conf(e.data) if e.kind is EntryKind.CONFIG else result
                if pending.term == e.term and value is not None:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(
                        OutcomeUnknownError("the write was replaced by a new leader's entry")
                    )
            if result is not None:
                for listener in list(self._apply_listeners):
                    listener(result)
        self._wake_apply_waiters()

    def _wake_apply_waiters(self) -> None:
        if self._apply_waiters:
            applied = self.applied_index
            waiting = []
            for index, waiter in self._apply_waiters:
                if index <= applied:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    waiting.append((index, waiter))
            self._apply_waiters = waiting

    def _restore_from_snapshot(self, meta: SnapshotMeta) -> None:
        """At start, before any loop runs: the state is behind the stored snapshot (it was
        lost, or a crash came between storing an install and switching the state to it)."""
        if self.storage.snapshot_held_by_state():
            raise FatalNodeError(
                f"the state database is at index {self.state.applied_index}, behind the log, "
                f"which was compacted to {meta.index} when the database held that durably: "
                "the database was lost or rolled back; replace this member"
            )
        reader = self.storage.open_snapshot()
        if reader is None:
            raise FatalNodeError(f"snapshot {meta.index} is recorded but cannot be opened")
        path = self._spool_path("restore")
        with reader:
            reader.copy_to(path)
        try:
            self.state.validate_copy(path)
        except ValueError as exc:
            path.unlink(missing_ok=True)
            raise FatalNodeError(
                f"the stored snapshot {meta.index} does not install: {exc}"
            ) from None
        self.state.install(path)
        logger.info("%s restored its state from snapshot %d", self.id, meta.index)

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        incoming, self._incoming_snapshot = self._incoming_snapshot, None
        if incoming is None or incoming[0] != meta:
            raise FatalNodeError(f"told to install snapshot {meta.index} that never arrived")
        path = incoming[1]
        try:
            async with self._snapshot_lock, self._apply_lock:
                # The storage first: once it holds the snapshot, a crash before the state
                # switches is repaired at start (_restore_from_snapshot).
                await self._storage_pool.run(self.storage.install_snapshot, meta, path)
                await self._apply_pool.run(self.state.install, path)
                self._drop_outgoing_copy()
                # The copy may hold more than the snapshot (open_snapshot): the entries up
                # to its index are skipped when they come.
                self.applied_index = LogIndex(max(self.applied_index, self.state.applied_index))
                self._applied_bytes_since_snapshot = 0
                self._wake_apply_waiters()
        finally:
            path.unlink(missing_ok=True)
        logger.info("%s installed snapshot %d from the leader", self.id, meta.index)

    def _maybe_snapshot(self) -> None:
        policy = self.config.snapshot
        since = self.applied_index - self.core.log.snapshot_index()
        if self._snapshotting or since <= 0 or self._stopping:
            return
        if since < policy.entries and self._applied_bytes_since_snapshot < policy.bytes:
            return
        if self.applied_index < self._snapshot_due:
            return
        self._snapshotting = True
        self._tasks.append(asyncio.create_task(self._take_snapshot(), name="snapshot"))

    async def _take_snapshot(self) -> None:
        try:
            async with self._snapshot_lock:
                started = self.clock.monotonic()
                async with self._apply_lock:
                    durable = await self._apply_pool.run(self.state.checkpoint)
                # TRAPS: a partial checkpoint makes nothing durable we could compact to.
                index = LogIndex(durable) if durable is not None else None
                if index is None or index <= self.core.log.snapshot_index():
                    self._snapshot_due = self.applied_index + max(
                        1, self.config.snapshot.entries // 4
                    )
                    if index is None:
                        logger.warning(
                            "%s: the state's checkpoint was partial (a reader held it back): "
                            "the log is not compacted this time",
                            self.id,
                        )
                    return
                term = self.core.log.term(index)
                if term is None:  # an install from the leader overtook us meanwhile
                    return
                meta = SnapshotMeta(index, term, self.core.conf_at(index))
                await self._storage_pool.run(self.storage.compact, meta)
                if index > self.core.log.snapshot_index():
                    self.core.compact(index)
                if self._outgoing_copy is not None and self._outgoing_copy[0] < index:
                    self._drop_outgoing_copy()  # it no longer covers the snapshot
            self._applied_bytes_since_snapshot = 0
            logger.info(
                "%s compacted its log to index %d term %d (the state is durable there): %.0f ms",
                self.id,
                index,
                term,
                (self.clock.monotonic() - started) * 1000,
            )
        except Exception as exc:
            self._fail_fatally(exc)
        finally:
            self._snapshotting = False
            self._wake.set()
