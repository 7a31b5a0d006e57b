"""supervisor/cluster.py: the Cluster API over real processes and proxies. Every behaviour runs
against the real `python -m node` (marked `cluster`); the main ones against the fake node too,
which is fast enough for the default quick run."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supervisor.cluster import (
    Cluster,
    ClusterClosedError,
    ClusterError,
    NodeStatus,
    NoLeaderError,
    PortInUseError,
    UnknownNodeError,
    majority_leader,
)
from supervisor.events import Event, EventKind
from supervisor.processes import NodeExit, ProcessState
from tests.conftest import node_channel_sync, peer_channel_sync
from tests.supervisor.conftest import (
    FAKE_NODE,
    REAL_NODE_EXISTS,
    assert_gone,
    node_children,
    poll,
    write_config,
)

REAL = pytest.param(
    "real",
    id="real",
    marks=[
        pytest.mark.cluster,
        pytest.mark.skipif(not REAL_NODE_EXISTS, reason="node/__main__.py not written yet"),
    ],
)
KINDS = [
    pytest.param("fake", id="fake"),
    pytest.param(
        "real",
        id="real",
        marks=[
            pytest.mark.cluster,
            pytest.mark.skipif(not REAL_NODE_EXISTS, reason="node/__main__.py not written yet"),
        ],
    ),
]


def node_command(kind: str) -> list[str] | None:
    return FAKE_NODE if kind == "fake" else None


class RecordingCluster(Cluster):
    """Records when each node is spawned and found serving."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[str, str]] = []

    def start_node(self, node_id: str, *, wait: bool = True) -> int:
        self.calls.append(("spawn", node_id))
        return super().start_node(node_id, wait=wait)

    def wait_serving(self, node_id: str, timeout_s: float | None = None) -> None:
        super().wait_serving(node_id, timeout_s)
        self.calls.append(("serving", node_id))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Both kinds of node by default; a test narrows it with @only_real."""
    return str(request.param)


only_real = pytest.mark.parametrize("kind", [REAL], indirect=True)


@pytest.fixture
def cluster(kind: str, tmp_path: Path) -> Iterator[RecordingCluster]:
    started = RecordingCluster(
        write_config(tmp_path), node_command=node_command(kind), stop_grace_s=3
    )
    started.start()
    pids = set(started.pids().values())
    try:
        yield started
    finally:
        if not started.closed:
            pids |= set(started.pids().values())
        started.close()
        assert_gone(sorted(pids))


def wait_for(cluster: Cluster, check: object, timeout_s: float = 15.0, what: str = "") -> None:
    poll(lambda: check(cluster.status(timeout_s=0.5)), timeout_s, what)  # type: ignore[operator]


def health_rtt_s(
    cluster: Cluster, node_id: str, address: str, *, peer: bool, rounds: int = 3
) -> float:
    """Median round trip of a gRPC health check to node_id at address (TLS): its peer port
    (through a link proxy, say) with the tool certificate, or its client port."""
    channel = (
        peer_channel_sync(cluster.config, node_id, address=address)
        if peer
        else node_channel_sync(cluster.config, address, [("grpc.enable_http_proxy", 0)])
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connect first
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# -- starting ---------------------------------------------------------------------------------


def test_start_writes_a_private_key_and_starts_the_configured_leader_first(
    cluster: RecordingCluster,
) -> None:
    key = cluster.data_dir / "cluster.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) >= 32
    # a is spawned and serving before anyone else is spawned, then b and c, then a leader.
    assert cluster.calls[:2] == [("spawn", "a"), ("serving", "a")]
    assert sorted(cluster.calls[2:]) == sorted(
        [("spawn", "b"), ("spawn", "c"), ("serving", "b"), ("serving", "c")]
    )
    statuses = cluster.status()
    assert [s.id for s in statuses] == ["a", "b", "c"]
    assert all(s.process is ProcessState.UP and s.pid for s in statuses)
    assert majority_leader(statuses, 3) == "a"  # the hint normally wins term 1
    assert cluster.address("b") == f"127.0.0.1:{cluster.config.node('b').port}"
    for node_id in "abc":  # each node runs with --exit-with-parent and its peers' proxies
        command_line = psutil.Process(cluster.pid(node_id)).cmdline()
        assert "--exit-with-parent" in command_line
        assert command_line.count("--peer") == 2


def test_an_address_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cluster = Cluster(config, node_command=FAKE_NODE)
    port = cluster.config.node("b").port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(
            PortInUseError, match=rf"nodes\.b\.port: 127\.0\.0\.1:{port} is already"
        ):
            cluster.start()
    assert not (tmp_path / "data").exists()  # no key written, no node started
    assert not node_children()


def test_fresh_wipes_the_nodes_data_and_nothing_else_and_a_hint_starts_first(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, leader="c")
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "old-log").write_text("old")
    (tmp_path / "data" / "notes.txt").write_text("mine")
    (tmp_path / "data" / "cluster.key").write_text("old-key\n")
    (tmp_path / "data" / "cluster.id").write_text("0ld1d\n")
    (tmp_path / "data" / "cluster.formed").write_text("formed long ago\n")
    with RecordingCluster(config, node_command=FAKE_NODE, fresh=True) as cluster:
        assert not (tmp_path / "data" / "a" / "old-log").exists()
        # A new cluster: a new id, formed anew by members started with --bootstrap.
        assert cluster.cluster_id != "0ld1d"
        assert (tmp_path / "data" / "cluster.formed").read_text() != "formed long ago\n"
        assert "--bootstrap" in psutil.Process(cluster.pid("a")).cmdline()
        assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
        assert (tmp_path / "data" / "cluster.key").read_text() != "old-key\n"
        assert cluster.calls[:2] == [("spawn", "c"), ("serving", "c")]
        assert cluster.wait_leader(5) == "c"


def test_initial_members_get_bootstrap_until_the_cluster_formed_and_never_after(
    cluster: Cluster,
) -> None:
    """Issue 14: `up` writes data_dir/cluster.id, and passes --bootstrap ID only until data_dir
    records that the cluster formed; a member started after that gets neither flag (a wiped one
    then exits rather than form a cluster of its own)."""
    cluster_id = (cluster.data_dir / "cluster.id").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{16}", cluster_id) and cluster.cluster_id == cluster_id
    assert "first leader a" in (cluster.data_dir / "cluster.formed").read_text()
    for node_id in "abc":
        command_line = psutil.Process(cluster.pid(node_id)).cmdline()
        assert command_line[command_line.index("--bootstrap") + 1] == cluster_id
    cluster.kill("b")
    cluster.start_node("b")
    command_line = psutil.Process(cluster.pid("b")).cmdline()
    assert "--bootstrap" not in command_line and "--join" not in command_line


# -- processes --------------------------------------------------------------------------------


def test_kill_and_start(cluster: Cluster) -> None:
    pid = cluster.pid("b")
    assert pid is not None
    exit = cluster.kill("b")
    assert (exit.pid, exit.exit_code, exit.expected) == (pid, -signal.SIGKILL, True)
    assert not psutil.pid_exists(pid)
    (status,) = [s for s in cluster.status() if s.id == "b"]
    assert status.process is ProcessState.DOWN and status.role is None
    assert status.last_exit == "killed by SIGKILL"
    assert cluster.wait_leader(10) in ("a", "c")
    new_pid = cluster.start_node("b")
    assert new_pid != pid and cluster.process_state("b") is ProcessState.UP
    with pytest.raises(ClusterError, match="already running"):
        cluster.start_node("b")
    wait_for(cluster, lambda s: all(x.role for x in s), what="b answering")


@only_real
def test_stop_and_restart(cluster: Cluster) -> None:
    exit = cluster.stop("c")
    assert exit.exit_code == 0  # a clean SIGTERM shutdown
    old = exit.pid
    pid = cluster.restart("c")
    assert pid != old
    pid_again = cluster.restart("c")  # restarting a running node stops it first
    assert pid_again != pid and not psutil.pid_exists(pid)
    assert cluster.wait_leader(10)


@only_real
def test_no_leader_without_a_majority_fails_clearly(cluster: Cluster) -> None:
    cluster.pause("b")
    cluster.pause("c")
    with pytest.raises(NoLeaderError, match=r"no leader known to a majority \(2 of 3\).*b: paused"):
        cluster.wait_leader(1.0)
    cluster.resume("b")
    cluster.resume("c")
    assert cluster.wait_leader(15)


@only_real
def test_a_node_exiting_on_its_own_is_reported(cluster: Cluster) -> None:
    exits: list[NodeExit] = []
    cluster.add_exit_listener(exits.append)
    pid = cluster.pid("b")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # not the supervisor's doing: an OOM killer, say
    poll(lambda: bool(exits), 5, "the exit to be reported")
    assert (exits[0].node_id, exits[0].pid, exits[0].exit_code) == ("b", pid, -9)
    assert not exits[0].expected and exits[0].log_tail
    assert cluster.unexpected_exits == exits
    assert not psutil.pid_exists(pid)  # reaped
    assert cluster.process_state("b") is ProcessState.DOWN


only_fake = pytest.mark.parametrize("kind", ["fake"], indirect=True)


@only_fake
def test_every_fault_its_undoing_and_an_exit_are_published_as_events(cluster: Cluster) -> None:
    """What the web view's event feed shows: each Cluster operation the REPL, chaos or the
    page makes is published by the Cluster itself, with the node and its pid."""
    heard: list[Event] = []
    cluster.events.subscribe(heard.append)
    killed = cluster.kill("c")
    started = cluster.start_node("c")
    cluster.pause("b")
    cluster.resume("b")
    cluster.partition(["a"])
    cluster.slow("b", 30)
    cluster.slow("b", 0)
    cluster.heal()
    pid = cluster.pid("b")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # on its own, as far as the supervisor knows
    poll(lambda: any(e.kind is EventKind.EXIT for e in heard), 5, "the exit event")
    assert [(e.kind, e.text, e.node) for e in heard] == [
        (EventKind.FAULT, f"killed c (pid {killed.pid})", "c"),
        (EventKind.REPAIR, f"started c (pid {started})", "c"),
        (EventKind.FAULT, "paused b", "b"),
        (EventKind.REPAIR, "resumed b", "b"),
        (EventKind.FAULT, "partition a | b,c", None),
        (EventKind.FAULT, "slowed b: +30 ms each way", "b"),
        (EventKind.REPAIR, "b: no added latency", "b"),
        (EventKind.REPAIR, "healed: every link whole, no added latency", None),
        (EventKind.EXIT, f"b (pid {pid}) exited on its own: killed by SIGKILL", "b"),
    ]
    assert cluster.events.recent()[-len(heard) :] == heard


def test_a_crash_with_an_exit_code_is_reported_with_its_log_and_links_are_optional(
    tmp_path: Path,
) -> None:
    with Cluster(write_config(tmp_path), node_command=FAKE_NODE, links=False) as cluster:
        # Without proxies the nodes dial each other directly, and the network cannot be cut.
        assert "--peer" not in psutil.Process(cluster.pid("a")).cmdline()
        with pytest.raises(ClusterError, match="without link proxies"):
            cluster.partition(["a"])
        (cluster.config.node_dir("c") / "CRASH").touch()
        poll(lambda: bool(cluster.unexpected_exits), 5, "the crash to be reported")
        (exit,) = cluster.unexpected_exits
        assert exit.exit_code == 3 and "fails its checksum" in "\n".join(exit.log_tail)
        assert "exit code 3 (storage error" in exit.describe()


# -- the network ------------------------------------------------------------------------------


def test_partition_minority_loses_its_leader_and_heal_reunites(cluster: Cluster) -> None:
    old = cluster.wait_leader(10)
    rest = [n for n in cluster.node_ids if n != old]
    assert cluster.partition([old], rest) == ((old,), tuple(rest))
    statuses = cluster.status()
    assert {s.id: s.group for s in statuses} == {old: 1, rest[0]: 2, rest[1]: 2}

    def majority_has_a_new_leader(statuses: list[NodeStatus]) -> bool:
        leader = majority_leader(statuses, 3)
        return leader is not None and leader != old

    wait_for(cluster, majority_has_a_new_leader, what="a new leader on the majority side")
    # The old leader, cut off with no majority, stops being leader (CheckQuorum) and follows
    # no one it can reach.
    wait_for(
        cluster,
        lambda s: next(x for x in s if x.id == old).role != "leader",
        what="the cut-off leader to step down",
    )
    new = cluster.wait_leader(1)
    cluster.heal()
    assert cluster.groups is None
    wait_for(
        cluster,
        lambda s: len({x.leader for x in s}) == 1 and s[0].leader in cluster.node_ids,
        what="every node following one leader again",
    )
    assert cluster.wait_leader(5) in cluster.node_ids
    del new


@only_real
def test_isolate_cuts_one_node_off(cluster: Cluster) -> None:
    leader = cluster.wait_leader(10)
    follower = next(n for n in cluster.node_ids if n != leader)
    assert cluster.isolate(follower)[0] == (follower,)
    assert cluster.wait_leader(5) == leader  # the majority keeps its leader
    cluster.heal()


def test_slow_raises_the_round_trip_through_the_nodes_links(cluster: Cluster) -> None:
    assert cluster.network is not None
    through_proxy = cluster.network.address("a", "b")  # a's way to b
    plain = health_rtt_s(cluster, "b", through_proxy, peer=True)
    cluster.slow("b", 80)
    slowed = health_rtt_s(cluster, "b", through_proxy, peer=True)
    assert slowed - plain >= 0.15  # 80 ms each way
    assert {s.id: s.slow_ms for s in cluster.status()} == {"a": 0, "b": 80, "c": 0}
    direct = health_rtt_s(cluster, "b", cluster.address("b"), peer=False)  # clients never are
    assert direct < 0.1
    cluster.heal()
    assert health_rtt_s(cluster, "b", through_proxy, peer=True) < 0.1


def test_unknown_nodes_are_named(tmp_path: Path) -> None:
    cluster = Cluster(write_config(tmp_path))  # checked before anything needs to run
    for action in (cluster.kill, cluster.pause, cluster.isolate, cluster.address):
        with pytest.raises(UnknownNodeError, match=r"no node 'z' \(nodes are a, b, c\)"):
            action("z")
    with pytest.raises(UnknownNodeError, match="no node 'z'"):
        cluster.partition(["a"], ["z"])
    with pytest.raises(UnknownNodeError, match="no node 'z'"):
        cluster.slow("z", 10)


# -- the end ----------------------------------------------------------------------------------


def test_pause_resume_and_close_stops_every_node_a_paused_one_included(
    cluster: Cluster,
) -> None:
    cluster.pause("c")
    pid = cluster.pid("c")
    assert pid is not None and psutil.Process(pid).status() == psutil.STATUS_STOPPED
    (status,) = [s for s in cluster.status() if s.id == "c"]
    assert status.process is ProcessState.PAUSED and status.error == "paused"
    assert cluster.wait_leader(10)  # two of three still make a majority
    cluster.resume("c")
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
    wait_for(cluster, lambda s: all(x.role for x in s), what="c answering")

    cluster.pause("b")
    pids = list(cluster.pids().values())
    assert len(pids) == 3
    started = time.monotonic()
    cluster.close()
    assert time.monotonic() - started < 5  # b got SIGCONT with its SIGTERM
    assert_gone(pids, 1)
    cluster.close()  # again: nothing to do
    with pytest.raises(ClusterClosedError):
        cluster.kill("a")
    with pytest.raises(ClusterClosedError):
        cluster.wait_leader(1)


def test_majority_leader() -> None:
    def s(node: str, role: str | None, term: int | None, leader: str | None) -> NodeStatus:
        empty = dict.fromkeys(
            ("commit_index", "applied_index", "last_index", "snapshot_index", "digest")
        )
        return NodeStatus(
            id=node,
            address="",
            pid=1,
            process=ProcessState.UP,
            role=role,
            term=term,
            leader=leader,
            last_contact_s=None,
            error=None,
            group=None,
            slow_ms=0,
            last_exit=None,
            **empty,  # type: ignore[arg-type]
        )

    assert majority_leader([s("a", "leader", 2, "a"), s("b", "follower", 2, "a")], 3) == "a"
    # One follower naming a is no majority of five.
    assert majority_leader([s("a", "leader", 2, "a"), s("b", "follower", 2, "a")], 5) is None
    # A stale leader at an old term is not the majority's leader.
    stale = [s("a", "leader", 1, "a"), s("b", "leader", 2, "b"), s("c", "follower", 2, "b")]
    assert majority_leader(stale, 3) == "b"
    # Followers naming a leader that does not (or cannot) say so itself are not enough.
    assert majority_leader([s("b", "follower", 2, "a"), s("c", "follower", 2, "a")], 3) is None
    assert majority_leader([s("a", None, None, None), s("b", "candidate", 3, "")], 3) is None
