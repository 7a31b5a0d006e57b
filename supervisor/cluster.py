"""`Cluster`: a whole chatbooth cluster on this machine, from cluster.yaml, that tests,
benchmarks and the REPL start, break and stop.

    with Cluster("cluster.yaml", fresh=True) as cluster:   # start(): every node, then a leader
        leader = cluster.wait_leader(10)
        cluster.partition([leader], [n for n in cluster.node_ids if n != leader])
        ...
    # close(): every node stopped by PID (SIGTERM, SIGCONT, grace, SIGKILL) and reaped

    scratch = dataclasses.replace(load_config("cluster.yaml"), data_dir=tmp / "data")
    with Cluster(scratch, fresh=True) as cluster:          # the same cluster, data elsewhere
        ...

Given a path, the nodes read that file. Given a ClusterConfig, they read the configuration
itself, as cluster.yaml text on their stdin (supervisor/nodeconfig.py): nothing is written.

Every connection is TLS unless cluster.yaml says `tls: plaintext`: start() makes the cluster's
CA and certificates under data_dir/tls when cluster.yaml names none (supervisor/certs.py); the
cluster's channels trust that CA, and Status with the digest goes to the peer port with the
`tool` certificate. The link proxies front the peer ports and forward the TLS bytes untouched.

Faults are only what a machine or a network does: processes are killed, stopped, paused and
resumed by signal (supervisor/processes.py) and links are cut or slowed by proxies between the
nodes (supervisor/links.py). The cluster never reaches into a node to fake a fault; it asks
nodes questions only through their public gRPC services (Health, Chat.Status), every call with
a deadline.

Spawning happens on the main thread only (TRAPS: PR_SET_PDEATHSIG); every other method may be
called from any thread.

Imports node.config (the one loader of cluster.yaml), protos, grpc, and the supervisor library
modules under it (errors, links, processes, nodeconfig, certs); never node internals, client or the
tools (repl, check, bench).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import node as node_package
from node.config import (
    PEERS_FILE,
    TOOL_NAME,
    ClusterConfig,
    ConfigError,
    NodeAddress,
    certificate_name,
    load_config,
    read_cluster_key,
    write_peers_file,
)
from protos import chat_pb2, chat_pb2_grpc
from protos.vocabulary import CLIENT_CHANNEL_OPTIONS, describe_rpc_error, role_name
from supervisor import formation
from supervisor.certs import (
    Credentials,
    ensure_cluster_credentials,
    read_credentials,
    secure_channel,
)
from supervisor.errors import SupervisorError
from supervisor.events import EventFeed, EventKind
from supervisor.links import Groups, LinkNetwork, format_groups
from supervisor.nodeconfig import STDIN_PATH, render
from supervisor.processes import (
    LOG_NAME,
    NodeExit,
    NodeProcess,
    ProcessState,
    ProcessTable,
    describe_exit,
)

logger = logging.getLogger(__name__)

LEADER_ROLE: Final = role_name(chat_pb2.LEADER)  # NodeStatus.role is the name, for people
POLL_INTERVAL_S: Final = 0.05


class ClusterError(SupervisorError):
    """The cluster cannot do what was asked."""


class UnknownNodeError(ClusterError):
    """No node has that id."""


class PortInUseError(ClusterError):
    """A configured node address is taken (an old node still running, or another program)."""


class NodeExitedError(ClusterError):
    """A node exited while the cluster waited for it; carries the exit and its log tail."""

    def __init__(self, exit: NodeExit) -> None:
        super().__init__(exit.describe())
        self.exit = exit


class NotServingError(ClusterError):
    """A node did not become SERVING in time."""


class NoLeaderError(ClusterError):
    """No leader known to a majority appeared before the deadline."""


class ClusterClosedError(ClusterError):
    """The cluster is closed (or closing): nothing more can be done with it."""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as the supervisor sees it: its process, its answer to Chat.Status (None fields:
    it did not answer), and the network around it."""

    id: str
    address: str  # where clients reach it
    pid: int | None
    process: ProcessState
    role: str | None  # follower, pre-candidate, candidate, leader
    term: int | None
    leader: str | None  # the leader it knows ("" none)
    commit_index: int | None
    applied_index: int | None
    last_index: int | None
    snapshot_index: int | None
    digest: str | None  # only when asked for
    last_contact_s: float | None  # seconds since its last answer to the supervisor
    error: str | None  # why it did not answer
    group: int | None  # 1-based partition group, None when there is no partition
    slow_ms: float
    last_exit: str | None  # how its last process ended, if one did
    # The committed membership as this node knows it (Status); None: it did not answer.
    voters: tuple[str, ...] | None = None
    learners: tuple[str, ...] | None = None
    # Since the node last heard from its leader, in ms (0: it leads; -1: none since it started).
    leader_contact_ms: int | None = None
    leader_changes: int | None = None  # how often the leader it knows changed, since it started
    # How late its event loop ran what was due, over the last 5 s: p99 and max, in ms.
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None

    @property
    def answered(self) -> bool:
        return self.role is not None

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["process"] = self.process.value
        if self.last_contact_s is not None:
            result["last_contact_s"] = round(self.last_contact_s, 3)
        return result


def majority_leader(statuses: Iterable[NodeStatus], cluster_size: int) -> str | None:
    """The leader known to a majority of the cluster, or None: some node says it is leader at
    term T, and a majority of all configured nodes (that one included) name it at term T. Two
    such leaders cannot exist (majorities intersect and each node names one leader)."""
    leaders: set[tuple[str, int]] = set()
    votes: collections.Counter[tuple[str, int]] = collections.Counter()
    for s in statuses:
        if s.role is None or s.term is None:
            continue  # no answer
        if s.role == LEADER_ROLE:
            leaders.add((s.id, s.term))
        named = s.id if s.role == LEADER_ROLE else (s.leader or "")
        if named:
            votes[(named, s.term)] += 1
    for (leader, term), count in votes.items():
        if count > cluster_size // 2 and (leader, term) in leaders:
            return leader
    return None


def committed_members(
    statuses: Sequence[NodeStatus], cluster_size: int
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(voters, learners) as the leader known to a majority reports them (else as the node
    that has committed most does), or None when no node answered with a membership."""
    leader = majority_leader(statuses, cluster_size)
    known = [s for s in statuses if s.voters is not None]
    if not known:
        return None
    best = next((s for s in known if s.id == leader), None)
    if best is None:
        best = max(known, key=lambda s: s.commit_index or 0)
    return best.voters or (), best.learners or ()


def check_addresses_free(config: ClusterConfig, node_ids: Iterable[str] | None = None) -> None:
    """PortInUseError (or ClusterError for a foreign host) unless every configured address of
    node_ids (default: all) can be listened on here now. SO_REUSEADDR as a server sets it, so
    that a port in TIME_WAIT from a node that just exited counts as free."""
    for node_id in node_ids if node_ids is not None else config.node_ids:
        node = config.node(node_id)
        for key, port, shown in (
            ("port", node.port, node.address),
            ("peer_port", node.peer_port, node.peer_address),
        ):
            _check_free(f"{config.path}: nodes.{node.id}", node.host, key, port, shown)


def _check_free(where: str, host: str, key: str, port: int, shown: str) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ClusterError(f"{where}.host: cannot resolve {host!r}: {error}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"{where}.{key}: {shown} is already in use (a node of a cluster "
                    "still running, or another program, listens there)"
                ) from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise ClusterError(
                    f"{where}.host: {host} is not an address of this machine; the "
                    "supervisor runs every node here"
                ) from None
            raise ClusterError(f"{where}: cannot listen on {shown}: {error}") from None


_open_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _close_forgotten_clusters() -> None:
    """A cluster its owner forgot to close still stops its nodes when Python exits."""
    for cluster in list(_open_clusters):
        with contextlib.suppress(Exception):
            cluster.close()


class Cluster:
    """A cluster from cluster.yaml: every node a local process, every node-to-node link through
    a proxy the cluster can cut. A context manager: `with Cluster(path) as c` starts it and
    stops every node at the end.

    `config` is the path of a cluster.yaml, loaded (and ConfigError raised) at construction,
    before anything starts; or a ClusterConfig, typically a loaded one relocated with
    `dataclasses.replace`, which the nodes are handed as it is (NodeConfigError at construction
    if it cannot be). `links=False` lets nodes dial each other directly (no partitions or
    latency then: for measuring what the proxies cost). `node_command` replaces `python -m
    node` (tests run a fake node with it)."""

    def __init__(
        self,
        config: ClusterConfig | str | Path,
        *,
        fresh: bool = False,
        links: bool = True,
        node_command: Sequence[str] | None = None,
        stop_grace_s: float = 5.0,
        start_timeout_s: float = 30.0,
        rpc_timeout_s: float = 1.0,
    ) -> None:
        if isinstance(config, ClusterConfig):
            self.config = config
            # What each node reads from its stdin; rendered (and checked) once, here.
            self._node_config: bytes | None = render(config).encode("utf-8")
        else:
            self.config = load_config(config)
            self._node_config = None  # the nodes read the file itself
        self.fresh = fresh
        self.use_links = links
        self.node_command = list(node_command or [sys.executable, "-m", "node"])
        self.stop_grace_s = stop_grace_s
        self.start_timeout_s = start_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.network: LinkNetwork | None = None
        self.unexpected_exits: list[NodeExit] = []  # nodes that exited on their own, in order
        self._listeners: list[Callable[[NodeExit], None]] = []
        self._table: ProcessTable | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._peer_channels: dict[str, grpc.Channel] = {}  # with the tool certificate
        self.credentials: Credentials | None = None  # the CA (None: plaintext), after start()
        self.tool_credentials: Credentials | None = None  # the CA and the tool certificate
        self.ca_expiry: datetime.datetime | None = None
        self._last_contact: dict[str, float] = {}
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self.cluster_id = ""  # data_dir/cluster.id, after start()
        self._added: dict[str, formation.AddedMember] = {}  # data_dir/members.json
        self._removed: set[str] = set()  # members removed: no longer this cluster's nodes
        self._started = False
        self._up = False  # start() completed: later exits are news (during it, errors)
        # Every fault made and undone, exits and membership, for watchers (the web view).
        self.events = EventFeed()

    # -- properties ---------------------------------------------------------------------------

    @property
    def node_ids(self) -> tuple[str, ...]:
        """cluster.yaml's nodes, then the members added since (data_dir/members.json)."""
        initial = self.config.node_ids
        ids = (*initial, *(n for n in self._added if n not in initial))
        return tuple(n for n in ids if n not in self._removed)

    @property
    def size(self) -> int:
        return len(self.node_ids)

    def node_address(self, node_id: str) -> NodeAddress:
        """Where the node serves: its cluster.yaml entry, or what `add` gave it."""
        if self._known(node_id) in self.config.node_ids:
            return self.config.node(node_id)
        return self._added[node_id].address

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def address(self, node_id: str) -> str:
        """Where clients reach the node (its configured host:port; clients never go through the
        proxies)."""
        return self.node_address(node_id).address

    def log_path(self, node_id: str) -> Path:
        return self.config.node_dir(self._known(node_id)) / "node.log"

    def log_tail(self, node_id: str, lines: int = 20) -> list[str]:
        return self._process(node_id).log_tail(lines)

    def pid(self, node_id: str) -> int | None:
        return self._process(node_id).pid

    def pids(self) -> dict[str, int]:
        """The PID of every running node."""
        return {n: pid for n in self.node_ids if (pid := self._process(n).pid) is not None}

    def process_state(self, node_id: str) -> ProcessState:
        return self._process(node_id).state()

    def add_exit_listener(self, listener: Callable[[NodeExit], None]) -> None:
        """Call listener (in the monitor thread) when a node exits on its own."""
        self._listeners.append(listener)

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Check the addresses are free, wipe the data if fresh, write data_dir/cluster.key if
        the file names no key and data_dir/cluster.id if there is none, start the proxies,
        start the configured leader and wait until it serves, start the others and wait until
        they serve, then wait for a leader (and record that the cluster formed). Everything is
        stopped again if any step fails."""
        with self._lock:
            if self._started:
                raise ClusterError("the cluster is already started")
            if self.closed:
                raise ClusterClosedError("the cluster is closed")
            self._started = True
            _open_clusters.add(self)
        try:
            check_addresses_free(self.config)
            if self.fresh:
                self._wipe()
            self._ensure_key()
            read_cluster_key(self.config)  # ConfigError now rather than a node exiting with 2
            self.cluster_id = formation.ensure_cluster_id(self.config)
            self._added = formation.read_added(self.config)
            self._removed = formation.read_removed(self.config)
            self._ensure_tls()
            if self.use_links:
                # The proxies front the peer ports: Raft and forwarded writes, TLS untouched.
                nodes = [self.node_address(n) for n in self.node_ids]
                self.network = LinkNetwork({n.id: (n.host, n.peer_port) for n in nodes})
                self.network.start(avoid_ports={p for n in nodes for p in (n.port, n.peer_port)})
            self.write_peers_files()  # the added members' addresses, proxies or not
            self._table = ProcessTable(
                {node_id: self._make_process(node_id) for node_id in self.node_ids},
                on_exit=self._node_exited,
            )
            self._table.start_monitor()
            first = self.config.leader or self.node_ids[0]
            self.start_node(first)
            rest = [n for n in self.node_ids if n != first]
            for node_id in rest:
                self.start_node(node_id, wait=False)
            for node_id in rest:
                self.wait_serving(node_id)
            leader = self.wait_leader(self.start_timeout_s)
            formation.record_formed(self.config, leader)  # no --bootstrap from now on
            self._up = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every node (SIGTERM and SIGCONT, a grace period, SIGKILL; by PID; every one
        reaped), the proxies and the channels. Idempotent; later calls do nothing."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
        try:
            if self._table is not None:
                self._table.close(self.stop_grace_s)
        finally:
            if self.network is not None:
                self.network.close()
            with self._lock:
                channels = [*self._channels.values(), *self._peer_channels.values()]
                self._channels.clear()
                self._peer_channels.clear()
            for channel in channels:
                channel.close()
            _open_clusters.discard(self)

    # -- processes ----------------------------------------------------------------------------

    def start_node(self, node_id: str, *, wait: bool = True) -> int:
        """Start a node that is down (main thread only); its PID. With wait, return once it
        serves (NodeExitedError if it exits first, NotServingError at start_timeout_s)."""
        process = self._process(node_id)
        self._check_open()
        if process.running:
            raise ClusterError(f"node {node_id} is already running (pid {process.pid})")
        self._check_free(node_id)
        self._drop_channel(node_id)  # a fresh channel: no reconnect backoff from its downtime
        added = self._added.get(node_id)
        if added is not None and not added.joined and added.incarnation < 1:
            raise ClusterError(f"{node_id} is not added yet: `replace {node_id}` adds it")
        process.argv = self._node_argv(node_id)  # --bootstrap only until the cluster formed
        pid = process.spawn()
        self.events.publish(EventKind.REPAIR, f"started {node_id} (pid {pid})", node_id)
        if wait:
            self.wait_serving(node_id)
        return pid

    def kill(self, node_id: str) -> NodeExit:
        """SIGKILL the node (a crash; works on a paused node too) and reap it."""
        self._check_open()
        exit = self._process(node_id).kill()
        self.events.publish(EventKind.FAULT, f"killed {node_id} (pid {exit.pid})", node_id)
        return exit

    def stop(self, node_id: str) -> NodeExit:
        """SIGTERM, SIGCONT, up to stop_grace_s, then SIGKILL; reaped."""
        self._check_open()
        exit = self._process(node_id).stop(self.stop_grace_s)
        how = describe_exit(exit.exit_code)
        self.events.publish(EventKind.FAULT, f"stopped {node_id} (pid {exit.pid}): {how}", node_id)
        return exit

    def restart(self, node_id: str) -> int:
        """Stop the node if it runs, start it again and wait until it serves; its new PID."""
        process = self._process(node_id)
        if process.running:
            self.stop(node_id)
        return self.start_node(node_id)

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the node freezes with its sockets open (a stalled machine)."""
        self._check_open()
        self._process(node_id).pause()
        self.events.publish(EventKind.FAULT, f"paused {node_id}", node_id)

    def resume(self, node_id: str) -> None:
        """SIGCONT a paused node."""
        self._check_open()
        self._process(node_id).resume()
        self.events.publish(EventKind.REPAIR, f"resumed {node_id}", node_id)

    # -- network ------------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> Groups:
        """Cut the links between groups: `partition(["a"], ["b", "c"])`; nodes no group names
        form one more group. Returns the partition as applied."""
        checked = [[self._known(node_id) for node_id in group] for group in groups]
        applied = self._links().partition(checked)
        self.events.publish(EventKind.FAULT, f"partition {format_groups(applied)}")
        return applied

    def isolate(self, node_id: str) -> Groups:
        """Cut one node off from all the others."""
        node_id = self._known(node_id)
        applied = self._links().isolate(node_id)
        self.events.publish(EventKind.FAULT, f"isolated {node_id}: {format_groups(applied)}")
        return applied

    def heal(self) -> None:
        """End the partition and any added latency; connections open across the cut are reset."""
        self._links().heal()
        self.events.publish(EventKind.REPAIR, "healed: every link whole, no added latency")

    def slow(self, node_id: str, ms: float) -> None:
        """Add ms of latency each way on every link of the node (0 removes it)."""
        node_id = self._known(node_id)
        self._links().slow(node_id, ms)
        if ms:
            self.events.publish(EventKind.FAULT, f"slowed {node_id}: +{ms:g} ms each way", node_id)
        else:
            self.events.publish(EventKind.REPAIR, f"{node_id}: no added latency", node_id)

    @property
    def groups(self) -> Groups | None:
        return self.network.groups if self.network is not None else None

    # -- questions to nodes -------------------------------------------------------------------

    def wait_serving(self, node_id: str, timeout_s: float | None = None) -> None:
        """Return once the node's gRPC health (service "") is SERVING."""
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        process = self._process(node_id)
        deadline = time.monotonic() + timeout_s
        stub = health_pb2_grpc.HealthStub(self._channel(node_id))
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            self._check_open()
            if not process.running:
                exit = process.last_exit
                if exit is not None:
                    raise NodeExitedError(exit)
                raise ClusterError(f"node {node_id} is not running")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                lines = "\n".join(f"    {line}" for line in process.log_tail(8, this_run=True))
                raise NotServingError(
                    f"node {node_id} did not serve within {timeout_s:g} s; last lines of "
                    f"{process.log_path}:\n{lines}"
                )
            try:
                reply = stub.Check(request, timeout=min(self.rpc_timeout_s, max(remaining, 0.05)))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            self._closing.wait(POLL_INTERVAL_S)

    def status(self, *, timeout_s: float | None = None, digest: bool = False) -> list[NodeStatus]:
        """Every node, in file order: its process, its Chat.Status answer (asked of all running
        nodes at once, each with a deadline; a paused node is not asked) and its links."""
        timeout_s = self.rpc_timeout_s if timeout_s is None else timeout_s
        pending: dict[str, Any] = {}
        states: dict[str, ProcessState] = {}
        for node_id in self.node_ids:
            states[node_id] = self.process_state(node_id)
            if states[node_id] is ProcessState.UP and not self.closed:
                # The digest is served on the peer port, to the tool certificate.
                channel = self._peer_channel(node_id) if digest else self._channel(node_id)
                stub = chat_pb2_grpc.ChatStub(channel)
                pending[node_id] = stub.Status.future(
                    chat_pb2.StatusRequest(with_digest=digest), timeout=timeout_s
                )
        result = []
        for node_id in self.node_ids:
            reply: chat_pb2.StatusReply | None = None
            error: str | None = None
            if node_id in pending:
                try:
                    reply = pending[node_id].result()
                    with self._lock:
                        self._last_contact[node_id] = time.monotonic()
                except grpc.RpcError as rpc_error:
                    error = describe_rpc_error(rpc_error)
            elif states[node_id] is ProcessState.PAUSED:
                error = "paused"
            else:
                error = "not running"
            result.append(self._node_status(node_id, states[node_id], reply, error))
        return result

    def leader(self, *, timeout_s: float | None = None) -> str | None:
        """The leader known to a majority right now (one round of Status), or None."""
        return majority_leader(self.status(timeout_s=timeout_s), self.size)

    def wait_leader(self, timeout_s: float = 30.0) -> str:
        """Wait until exactly one leader is known to a majority of the cluster; its id.
        NoLeaderError at the deadline, saying what each node answered."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_open()
            remaining = deadline - time.monotonic()
            statuses = self.status(timeout_s=min(self.rpc_timeout_s, max(remaining, 0.1)))
            leader = majority_leader(statuses, self.size)
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                seen = "; ".join(_describe_view(s) for s in statuses)
                raise NoLeaderError(
                    f"no leader known to a majority ({self.size // 2 + 1} of {self.size}) "
                    f"within {timeout_s:g} s: {seen}"
                )
            self._closing.wait(POLL_INTERVAL_S)

    # -- internals ----------------------------------------------------------------------------

    def _known(self, node_id: str) -> str:
        if node_id not in self.node_ids:
            raise UnknownNodeError(f"no node {node_id!r} (nodes are {', '.join(self.node_ids)})")
        return node_id

    def _process(self, node_id: str) -> NodeProcess:
        self._known(node_id)
        if self._table is None:
            raise ClusterError("the cluster is not started")
        return self._table[node_id]

    def _links(self) -> LinkNetwork:
        self._check_open()
        if self.network is None:
            if not self.use_links:
                raise ClusterError("this cluster runs without link proxies (links=False)")
            raise ClusterError("the cluster is not started")
        return self.network

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise ClusterClosedError("the cluster is closed")

    def _node_argv(self, node_id: str) -> list[str]:
        """The node's command line for its next start."""
        source = STDIN_PATH if self._node_config is not None else str(self.config.path)
        argv = [*self.node_command, "--config", source, "--id", node_id]
        added = self._added.get(node_id)
        if added is not None and node_id not in self.config.node_ids:
            # A member added later: in no cluster.yaml, so it says where it serves.
            argv += ["--address", added.address.address]
            argv += ["--peer-address", added.address.peer_address]
        if added is not None and not added.joined:
            # Added (or replaced): --join as the incarnation its add made, on its first start
            # only. After that an empty data directory must not join again as if nothing had
            # happened: it exits, and is replaced.
            argv += ["--join", self.cluster_id, "--incarnation", str(added.incarnation)]
        elif added is None and not formation.is_formed(self.config):
            # Only an initial member forms the cluster, and only until it has: a member whose
            # data is lost later must not form a cluster of its own (supervisor.formation).
            argv += ["--bootstrap", self.cluster_id]
        if self.network is not None:
            # The added members' proxies are in the node's peers file (write_peers_files).
            initial = [n for n in self.config.node_ids if n in self.node_ids]  # not removed
            argv += self.network.peer_arguments(node_id, initial)
        # The node writes its log itself, rotated by size, so that no client can fill the disk
        # through it; the process's own stdout and stderr (Python's last words, if it dies)
        # are appended to the same file.
        log_file = self.config.node_dir(node_id) / LOG_NAME
        return [*argv, "--log-file", str(log_file), "--exit-with-parent"]

    def _make_process(self, node_id: str) -> NodeProcess:
        argv = self._node_argv(node_id)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The directory holding the `node` package: `python -m node` finds it there whatever
        # the supervisor's working directory (and a node called "node" cannot shadow it).
        cwd = Path(node_package.__file__).resolve().parent.parent
        return NodeProcess(
            node_id,
            argv,
            node_dir=self.config.node_dir(node_id),
            cwd=cwd,
            env=env,
            stdin_data=self._node_config,
        )

    def _check_free(self, node_id: str) -> None:
        if node_id in self.config.node_ids:
            check_addresses_free(self.config, [node_id])
            return
        node = self.node_address(node_id)
        where = f"{formation.ADDED_NAME}: {node_id}"
        _check_free(where, node.host, "port", node.port, node.address)
        _check_free(where, node.host, "peer_port", node.peer_port, node.peer_address)

    def write_peers_files(self) -> None:
        """Write every node's data_dir/N/peers: how it reaches each member added after the
        cluster formed (through the proxy of that link), and the client address it names to
        clients. Written before an add is proposed: nodes read it at every configuration
        change (node.peers)."""
        with self._lock:
            added = dict(self._added)
        for node_id in self.node_ids:
            peers = {}
            for member, entry in added.items():
                if member == node_id or member in self.config.node_ids:
                    continue  # the initial members are in cluster.yaml (and --peer)
                dial = entry.address.peer_address
                if self.network is not None:
                    dial = self.network.address(node_id, member)
                peers[member] = (dial, entry.address.address)
            node_dir = self.config.node_dir(node_id)
            node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_peers_file(node_dir / PEERS_FILE, peers)

    def register_member(self, address: NodeAddress) -> None:
        """Make a new member known (main thread): recorded in data_dir/members.json (not yet
        joined), its links added, its process made, every peers file rewritten. It is not
        started, and not yet in the configuration (supervisor.membership adds it)."""
        with self._lock:
            if address.id in self.node_ids:
                raise ClusterError(f"node {address.id} is already known")
            self._removed.discard(address.id)
            self._record_added(address.id, formation.AddedMember(address))
        if self.network is not None and address.id not in self.network.nodes:
            self.network.add_node(address.id, (address.host, address.peer_port))
        if self._table is None:
            raise ClusterError("the cluster is not started")
        if address.id not in self._table.processes:  # (a member removed before has one)
            self._table.add(self._make_process(address.id))
        self.write_peers_files()
        self.events.publish(EventKind.MEMBER, f"{address.id} is being added", address.id)

    def set_incarnation(self, node_id: str, incarnation: int) -> None:
        """The member's add was made, at index `incarnation`: its first start joins as that."""
        with self._lock:
            entry = self._added[node_id]
            self._record_added(node_id, dataclasses.replace(entry, incarnation=incarnation))

    def mark_joined(self, node_id: str) -> None:
        """The member started once (its data directory records it): no --join from now on."""
        with self._lock:
            entry = self._added.get(node_id)
            if entry is None or entry.joined:
                return
            self._record_added(node_id, dataclasses.replace(entry, joined=True))

    def mark_rejoining(self, node_id: str) -> None:
        """The member is being replaced (its data wiped): it is added again, then joins."""
        with self._lock:
            self._record_added(node_id, formation.AddedMember(self.node_address(node_id)))

    def mark_removed(self, node_id: str) -> None:
        """The member was removed and its process stopped: no longer one of this cluster's
        nodes (status, `up`), until it is added again."""
        if self._process(node_id).running:
            raise ClusterError(f"node {node_id} is running: stop it before it is forgotten")
        with self._lock:
            self._removed.add(node_id)
            self._added.pop(node_id, None)
            formation.write_added(self.config, self._added, self._removed)
        self.events.publish(EventKind.MEMBER, f"{node_id} was removed", node_id)

    def _record_added(self, node_id: str, entry: formation.AddedMember) -> None:
        """Under the lock: set the member's entry and write data_dir/members.json."""
        self._added[node_id] = entry
        formation.write_added(self.config, self._added, self._removed)

    def removed(self) -> set[str]:
        with self._lock:
            return set(self._removed)

    def wipe_node(self, node_id: str) -> None:
        """Remove the data directory of a node that is down (`replace`)."""
        if self._process(node_id).running:
            raise ClusterError(f"node {node_id} is running: stop it before its data is wiped")
        node_dir = self.config.node_dir(node_id)
        try:
            if node_dir.is_dir() and not node_dir.is_symlink():
                shutil.rmtree(node_dir)
        except OSError as error:
            raise ClusterError(f"cannot wipe {error.filename}: {error.strerror}") from None
        self.write_peers_files()

    def _node_exited(self, exit: NodeExit) -> None:
        self.unexpected_exits.append(exit)
        how = describe_exit(exit.exit_code)
        text = f"{exit.node_id} (pid {exit.pid}) exited on its own: {how}"
        self.events.publish(EventKind.EXIT, text, exit.node_id)
        if self._up and not self._listeners:
            logger.warning("%s", exit.describe())
        for listener in list(self._listeners):
            try:
                listener(exit)
            except Exception:
                logger.exception("exit listener failed")

    def _channel(self, node_id: str) -> grpc.Channel:
        with self._lock:
            self._check_open()
            channel = self._channels.get(node_id)
            if channel is None:
                channel = secure_channel(
                    self.address(node_id), self.credentials, CLIENT_CHANNEL_OPTIONS
                )
                self._channels[node_id] = channel
            return channel

    def peer_channel(self, node_id: str) -> grpc.Channel:
        """A channel to the node's peer port with the tool certificate (Membership, digests)."""
        return self._peer_channel(node_id)

    def _peer_channel(self, node_id: str) -> grpc.Channel:
        """A channel to the node's peer port (directly, not through a proxy) with the tool
        certificate, checked against the node's member name."""
        with self._lock:
            self._check_open()
            channel = self._peer_channels.get(node_id)
            if channel is None:
                channel = secure_channel(
                    self.node_address(node_id).peer_address,
                    self.tool_credentials,
                    CLIENT_CHANNEL_OPTIONS,
                    target_name=certificate_name(node_id, self.config.cluster),
                )
                self._peer_channels[node_id] = channel
            return channel

    def _drop_channel(self, node_id: str) -> None:
        with self._lock:
            channels = [self._channels.pop(node_id, None), self._peer_channels.pop(node_id, None)]
        for channel in channels:
            if channel is not None:
                channel.close()

    def _node_status(
        self,
        node_id: str,
        state: ProcessState,
        reply: chat_pb2.StatusReply | None,
        error: str | None,
    ) -> NodeStatus:
        process = self._process(node_id)
        with self._lock:
            contact = self._last_contact.get(node_id)
        network = self.network
        last_exit = process.last_exit
        return NodeStatus(
            id=node_id,
            address=self.address(node_id),
            pid=process.pid,
            process=state,
            role=role_name(reply.role) if reply is not None else None,
            term=reply.term if reply is not None else None,
            leader=reply.leader_id if reply is not None else None,
            commit_index=reply.commit_index if reply is not None else None,
            applied_index=reply.applied_index if reply is not None else None,
            last_index=reply.last_index if reply is not None else None,
            snapshot_index=reply.snapshot_index if reply is not None else None,
            digest=(reply.state_digest or None) if reply is not None else None,
            last_contact_s=time.monotonic() - contact if contact is not None else None,
            error=error,
            group=network.group_of(node_id) if network is not None else None,
            slow_ms=network.slow_ms(node_id) if network is not None else 0.0,
            last_exit=describe_exit(last_exit.exit_code) if last_exit is not None else None,
            voters=_members(reply, voter=True),
            learners=_members(reply, voter=False),
            leader_contact_ms=reply.last_contact_ms if reply is not None else None,
            leader_changes=reply.leader_changes if reply is not None else None,
            loop_lag_p99_ms=reply.loop_lag_p99_ms if reply is not None else None,
            loop_lag_max_ms=reply.loop_lag_max_ms if reply is not None else None,
        )

    def _wipe(self) -> None:
        """--fresh: remove each node's directory and a cluster key the supervisor wrote. Only
        those: data_dir may hold other things, which are not ours to delete."""
        try:
            # and every member added since (data_dir/members.json, which is wiped below)
            added = formation.read_added(self.config) if self.config.data_dir.exists() else {}
            for node_id in dict.fromkeys([*self.config.node_ids, *added]):
                node_dir = self.config.node_dir(node_id)
                if node_dir.is_dir() and not node_dir.is_symlink():
                    shutil.rmtree(node_dir)
                elif node_dir.exists() or node_dir.is_symlink():
                    node_dir.unlink()
            if self.config.cluster_key is None and self.config.cluster_key_file is None:
                self.config.default_key_file.unlink(missing_ok=True)
            formation.wipe(self.config)  # a new cluster, with a new id
        except OSError as error:
            raise ClusterError(f"--fresh: cannot wipe {error.filename}: {error.strerror}") from None
        logger.info("wiped the data of %s under %s", ", ".join(self.node_ids), self.data_dir)

    def _ensure_tls(self) -> None:
        """Make the cluster's CA and certificates under data_dir/tls when cluster.yaml names
        none (kept by --fresh: wiping the nodes keeps their credentials); read the CA and the
        tool certificate for the cluster's own channels."""
        if self.config.plaintext:
            # Not "in cluster.yaml": `bench --plaintext` turns TLS off for its own run.
            logger.warning(
                "TLS is off for cluster %s: every connection is unencrypted and unauthenticated",
                self.config.cluster,
            )
            return
        self.ca_expiry = ensure_cluster_credentials(self.config)
        self.credentials = read_credentials(self.config)
        self.tool_credentials = read_credentials(self.config, TOOL_NAME)
        files = self.config.tls
        logger.info(
            "TLS: cluster CA %s, valid until %s",
            files.ca if files is not None else "-",
            f"{self.ca_expiry:%Y-%m-%d}" if self.ca_expiry is not None else "?",
        )

    def _ensure_key(self) -> None:
        """Write data_dir/cluster.key (random, mode 0600) when the file names no key."""
        config = self.config
        if config.cluster_key is not None or config.cluster_key_file is not None:
            return
        path = config.default_key_file
        if path.exists():
            return
        try:
            config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # written in the meantime
        except OSError as error:
            raise ConfigError(
                f"{config.path}: data_dir: cannot write the cluster key {path}: "
                f"{error.strerror or error}"
            ) from None
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        logger.info("wrote a new cluster key to %s", path)


def _describe_view(status: NodeStatus) -> str:
    if status.role is None:
        return f"{status.id}: {status.error or 'no answer'}"
    leader = status.leader or "none"
    return f"{status.id}: {status.role} at term {status.term}, leader {leader}"


def _members(reply: chat_pb2.StatusReply | None, *, voter: bool) -> tuple[str, ...] | None:
    if reply is None or not reply.members:
        return None
    return tuple(m.node_id for m in reply.members if m.voter == voter)
