"""Chaos on demand: one random fault per interval (kill, pause, partition, slow, and with
`--membership` a membership change), the previous one undone first (start, resume, heal,
unslow, add back), for the REPL's `chaos start` / `chaos stop`.

A membership change removes a member (its process stops; it is added back, as a new incarnation
with an empty disk, at the next step) or replaces one (its disk wiped, removed and added again
at once, leader included). Either takes one member out of the majority while it lasts, so it
counts against the minority as a kill does.

Two layers:

- `Chaos` chooses and undoes faults: a seeded RNG (the seed is announced, so a session can be
  repeated), at most a minority of the nodes faulted at once unless `unsafe`, and every step
  planned against the cluster as it is (a node the user killed counts against the minority; an
  undo skips what someone else undid already). Its steps are generators of `Action`s, each
  planned after the one before it was applied, so the same logic runs synchronously in tests
  against a fake cluster and asynchronously in the REPL.
- `ChaosRunner` is the timer: an asyncio task on the REPL's event loop, which runs on the main
  thread. A node is only ever spawned from there (TRAPS: PR_SET_PDEATHSIG fires when the
  spawning *thread* exits); every other blocking call (kill and reap, pause, the proxies, waiting
  for a node to serve) runs in a worker thread so that the prompt and the toolbar stay live.

Sits between supervisor.cluster and the REPL: imports the supervisor modules up to cluster
(for ClusterClosedError; it drives a cluster only through the ChaosTarget protocol), never node
internals, client or prompt_toolkit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from supervisor.cluster import ClusterClosedError
from supervisor.errors import SupervisorError
from supervisor.links import Groups, format_groups
from supervisor.processes import ProcessState

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S: Final = 5.0
MIN_INTERVAL_S: Final = 0.2
SLOW_CHOICES_MS: Final = (100.0, 200.0, 400.0)
SERVE_TIMEOUT_S: Final = 15.0  # a node chaos restarted must serve before the next fault
LEADER_TIMEOUT_S: Final = 15.0  # `chaos stop` waits this long for a leader
HALT_TIMEOUT_S: Final = 20.0  # how long stopping waits for the step in progress


class FaultKind(enum.Enum):
    KILL = "kill"
    PAUSE = "pause"
    PARTITION = "partition"
    SLOW = "slow"
    MEMBERSHIP = "membership"


ALL_KINDS: Final = tuple(k for k in FaultKind if k is not FaultKind.MEMBERSHIP)  # the default
NETWORK_KINDS: Final = (FaultKind.PARTITION, FaultKind.SLOW)


class Op(enum.Enum):
    KILL = "kill"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    PARTITION = "partition"
    HEAL = "heal"
    SLOW = "slow"
    REMOVE = "remove"
    ADD = "add"
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class Action:
    """One call on the cluster."""

    op: Op
    node: str = ""  # every op but PARTITION and HEAL
    groups: Groups = ()  # PARTITION only
    slow_ms: float = 0.0  # SLOW only; 0 removes the latency

    def describe(self) -> str:
        if self.op is Op.PARTITION:
            return f"partition {format_groups(self.groups)}"
        if self.op is Op.HEAL:
            return "heal"
        if self.op is Op.SLOW:
            return f"slow {self.node} {self.slow_ms:g}ms" if self.slow_ms else f"unslow {self.node}"
        return f"{self.op.value} {self.node}"

    @property
    def spawns(self) -> bool:
        """Whether it starts a process (main thread only)."""
        return self.op in (Op.START, Op.ADD, Op.REPLACE)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault made by chaos, undone at the next step."""

    kind: FaultKind
    nodes: tuple[str, ...]  # killed, paused or slowed; for a partition, the side cut off
    groups: Groups = ()  # PARTITION only: nodes first, then the others
    slow_ms: float = 0.0  # SLOW only
    replace: bool = False  # MEMBERSHIP only: replace the member, else remove it

    def describe(self) -> str:
        if self.kind is FaultKind.PARTITION:
            return f"partition {format_groups(self.groups)}"
        names = ",".join(self.nodes)
        if self.kind is FaultKind.SLOW:
            return f"slow {names} {self.slow_ms:g}ms"
        if self.kind is FaultKind.MEMBERSHIP:
            return f"{'replace' if self.replace else 'remove'} {names}"
        return f"{self.kind.value} {names}"

    def faulted(self, size: int) -> tuple[str, ...]:
        """The nodes this fault takes out of a majority: for a partition, those in no group
        holding a majority of the `size` nodes; otherwise every node it names."""
        if self.kind is not FaultKind.PARTITION:
            return self.nodes
        return tuple(n for g in self.groups if len(g) <= size // 2 for n in g)

    def actions(self) -> list[Action]:
        if self.kind is FaultKind.PARTITION:
            return [Action(Op.PARTITION, groups=self.groups)]
        if self.kind is FaultKind.SLOW:
            return [Action(Op.SLOW, n, slow_ms=self.slow_ms) for n in self.nodes]
        if self.kind is FaultKind.MEMBERSHIP:
            return [Action(Op.REPLACE if self.replace else Op.REMOVE, n) for n in self.nodes]
        op = Op.KILL if self.kind is FaultKind.KILL else Op.PAUSE
        return [Action(op, n) for n in self.nodes]


class ChaosTarget(Protocol):
    """What chaos needs of a cluster (supervisor.Cluster has it all; tests pass a fake)."""

    @property
    def node_ids(self) -> tuple[str, ...]: ...
    @property
    def groups(self) -> Groups | None: ...
    def process_state(self, node_id: str) -> ProcessState: ...
    def kill(self, node_id: str) -> object: ...
    def start_node(self, node_id: str, *, wait: bool = True) -> int: ...
    def wait_serving(self, node_id: str, timeout_s: float | None = None) -> None: ...
    def pause(self, node_id: str) -> None: ...
    def resume(self, node_id: str) -> None: ...
    def partition(self, *groups: Iterable[str]) -> Groups: ...
    def heal(self) -> None: ...
    def slow(self, node_id: str, ms: float) -> None: ...
    def wait_leader(self, timeout_s: float = 30.0) -> str: ...


class MemberChanges(Protocol):
    """What chaos needs to change the membership (supervisor.membership.Membership has it;
    tests pass a fake). `add` and `replace` spawn (main thread); `join_from_loop` runs either
    from the main thread's event loop, `prepare` being `prepare_add` or `prepare_replace`."""

    def remove(self, node_id: str) -> object: ...
    def add(self, node_id: str) -> object: ...
    def replace(self, node_id: str) -> object: ...
    def prepare_add(self, node_id: str) -> None: ...
    def prepare_replace(self, node_id: str) -> None: ...
    async def join_from_loop(self, node_id: str, prepare: Callable[[str], None]) -> object: ...


def minority(size: int) -> int:
    """The most nodes that may be out while a majority of `size` remains."""
    return (size - 1) // 2


def choose_fault(
    rng: random.Random,
    node_ids: Sequence[str],
    kinds: Sequence[FaultKind],
    *,
    unsafe: bool = False,
    unavailable: Sequence[str] = (),
) -> Fault | None:
    """A random fault over node_ids (in their order: never a set's, whose order changes with
    PYTHONHASHSEED), or None when the budget is spent: without `unsafe`, the faulted nodes and
    the `unavailable` ones (down or paused by someone else) stay a minority."""
    if not kinds:
        raise ValueError("choose_fault needs at least one kind of fault")
    size = len(node_ids)
    candidates = [n for n in node_ids if n not in unavailable]
    budget = size if unsafe else minority(size) - (size - len(candidates))
    budget = min(budget, len(candidates))
    if budget < 1:
        return None
    kind = rng.choice(list(kinds))
    count = 1 if kind is FaultKind.MEMBERSHIP else rng.randint(1, budget)  # one at a time
    chosen = rng.sample(candidates, count)
    victims = tuple(n for n in node_ids if n in chosen)
    if kind is FaultKind.PARTITION:
        rest = tuple(n for n in node_ids if n not in victims)
        if not rest:  # unsafe: everyone cut off from everyone
            return Fault(kind, victims, tuple((n,) for n in victims))
        return Fault(kind, victims, (victims, rest))
    if kind is FaultKind.SLOW:
        return Fault(kind, victims, slow_ms=rng.choice(SLOW_CHOICES_MS))
    if kind is FaultKind.MEMBERSHIP:
        return Fault(kind, victims, replace=rng.random() < 0.5)
    return Fault(kind, victims)


class Chaos:
    """Which fault to make next and how to undo the current one, against a target."""

    def __init__(
        self,
        target: ChaosTarget,
        *,
        seed: int,
        kinds: Sequence[FaultKind] = ALL_KINDS,
        unsafe: bool = False,
        members: MemberChanges | None = None,
    ) -> None:
        if not kinds:
            raise ValueError("chaos needs at least one kind of fault")
        if FaultKind.MEMBERSHIP in kinds and members is None:
            raise ValueError("membership changes need a MemberChanges")
        self.target = target
        self.members = members
        self.seed = seed
        self.kinds = tuple(kinds)
        self.unsafe = unsafe
        self.current: Fault | None = None
        self.faults_made = 0
        self._rng = random.Random(seed)

    def step(self) -> Iterator[Action]:
        """Undo the current fault, then make a new one (self.current; None if the budget is
        spent). Each action is planned once the one before it was applied."""
        yield from self.undo()
        unavailable = [
            n for n in self.target.node_ids if self.target.process_state(n) is not ProcessState.UP
        ]
        fault = choose_fault(
            self._rng, self.target.node_ids, self.kinds, unsafe=self.unsafe, unavailable=unavailable
        )
        self.current = fault  # before applying: a half-made fault is still undone
        if fault is not None:
            self.faults_made += 1
            yield from fault.actions()

    def undo(self) -> Iterator[Action]:
        """Undo the current fault, skipping what is already undone (by hand, or by a node)."""
        fault, self.current = self.current, None
        if fault is None:
            return
        if fault.kind is FaultKind.PARTITION:
            if self.target.groups is not None:
                yield Action(Op.HEAL)
            return
        if fault.kind is FaultKind.MEMBERSHIP:  # a replace that completed left nothing to do
            for node in fault.nodes:
                if node not in self.target.node_ids:
                    yield Action(Op.ADD, node)
            return
        for node in fault.nodes:
            state = self.target.process_state(node)
            if fault.kind is FaultKind.KILL and state is ProcessState.DOWN:
                yield Action(Op.START, node)
            elif fault.kind is FaultKind.PAUSE and state is ProcessState.PAUSED:
                yield Action(Op.RESUME, node)
            elif fault.kind is FaultKind.SLOW:
                yield Action(Op.SLOW, node, slow_ms=0.0)

    def make_whole(self) -> Iterator[Action]:
        """Undo the current fault, then whatever else is broken: every node up and resumed, the
        network healed with no added latency."""
        yield from self.undo()
        for node in self.target.node_ids:
            state = self.target.process_state(node)
            if state is ProcessState.DOWN:
                yield Action(Op.START, node)
            elif state is ProcessState.PAUSED:
                yield Action(Op.RESUME, node)
        yield Action(Op.HEAL)  # also removes latency; cheap when there is nothing to heal


def apply(target: ChaosTarget, action: Action, members: MemberChanges | None = None) -> None:
    """Make one call on the cluster. Op.START, ADD and REPLACE spawn: call them from the main
    thread. A membership change needs `members`."""
    match action.op:
        case Op.KILL:
            target.kill(action.node)
        case Op.START:
            target.start_node(action.node, wait=False)
        case Op.PAUSE:
            target.pause(action.node)
        case Op.RESUME:
            target.resume(action.node)
        case Op.PARTITION:
            target.partition(*action.groups)
        case Op.HEAL:
            target.heal()
        case Op.SLOW:
            target.slow(action.node, action.slow_ms)
        case Op.REMOVE | Op.ADD | Op.REPLACE:
            if members is None:
                raise ValueError(f"{action.describe()}: a membership change needs MemberChanges")
            change = {Op.REMOVE: members.remove, Op.ADD: members.add, Op.REPLACE: members.replace}
            change[action.op](action.node)


def run_sync(
    target: ChaosTarget, actions: Iterator[Action], members: MemberChanges | None = None
) -> list[Action]:
    """Apply a step's actions one after the other in this thread (tests; a fake cluster)."""
    done = []
    for action in actions:
        apply(target, action, members)
        done.append(action)
    return done


class ChaosRunner:
    """The timer: a task on the running event loop (the main thread) that steps a Chaos every
    interval and announces each action through `say` ("chaos: kill b")."""

    def __init__(self, chaos: Chaos, interval_s: float, say: Callable[[str], None]) -> None:
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(f"the interval must be at least {MIN_INTERVAL_S} s")
        self.chaos = chaos
        self.interval_s = interval_s
        self.say = say
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def describe(self) -> str:
        """For the toolbar: `chaos every 5s: kill b`."""
        current = self.chaos.current.describe() if self.chaos.current is not None else "-"
        unsafe = " unsafe" if self.chaos.unsafe else ""
        return f"chaos{unsafe} every {self.interval_s:g}s: {current}"

    def start(self) -> None:
        """Begin now: the first fault at once, then one per interval."""
        if self._task is not None:
            raise SupervisorError("this chaos runner was started already")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="chaos")

    async def halt(self) -> None:
        """Stop the timer once the step in progress is done (no fault is left half-made by
        a cancellation); faults stay as they are."""
        self._stopping.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), HALT_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> str | None:
        """Halt, then leave the cluster whole: every node up and serving, resumed, healed, no
        latency; the leader then (None if none appeared within LEADER_TIMEOUT_S)."""
        await self.halt()
        for action in self.chaos.make_whole():
            await self._do(action)
        try:
            return await asyncio.to_thread(self.chaos.target.wait_leader, LEADER_TIMEOUT_S)
        except SupervisorError as error:
            self.say(f"chaos: {error}")
            return None

    async def _loop(self) -> None:
        due = time.monotonic()
        try:
            while not self._stopping.is_set():
                for action in self.chaos.step():
                    await self._do(action)
                if self.chaos.current is None:
                    self.say("chaos: no fault this step (a minority is down already)")
                due = max(due + self.interval_s, time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), due - time.monotonic())
        except _ClusterGone:
            self.say("chaos: stopped (the cluster is closed)")
        except Exception as error:  # a bug must stop chaos loudly, not silently
            logger.exception("chaos failed")
            self.say(f"chaos: stopped by an error: {type(error).__name__}: {error}")

    async def _do(self, action: Action) -> None:
        """Apply one action (a spawn here, on the loop's thread; the rest in a worker) and
        announce it; a failure is announced, and chaos goes on."""
        target, members = self.chaos.target, self.chaos.members
        try:
            if action.op in (Op.ADD, Op.REPLACE) and members is not None:
                # Announced first: a join waits (in threads) for the member to catch up.
                self.say(f"chaos: {action.describe()}")
                prepare = members.prepare_add if action.op is Op.ADD else members.prepare_replace
                await members.join_from_loop(action.node, prepare)
                self.say(f"chaos: {action.node} is a voter again")
                return
            if action.spawns:
                apply(target, action, members)
            else:
                await asyncio.to_thread(apply, target, action, members)
            self.say(f"chaos: {action.describe()}")
            if action.spawns:  # the next fault must find a majority that serves
                await asyncio.to_thread(target.wait_serving, action.node, SERVE_TIMEOUT_S)
        except SupervisorError as error:
            if isinstance(error, ClusterClosedError):
                raise _ClusterGone from error
            self.say(f"chaos: {action.describe()} failed: {error}")


class _ClusterGone(Exception):
    """The cluster was closed under chaos (the supervisor is shutting down)."""
