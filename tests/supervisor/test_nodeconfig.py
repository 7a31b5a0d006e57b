"""supervisor/nodeconfig.py and `Cluster(ClusterConfig)`: a configuration relocated with
dataclasses.replace reaches the nodes whole, on their stdin, and no cluster.yaml is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from node.config import (
    ChatLimits,
    ClusterConfig,
    RaftTimings,
    ScryptCost,
    SnapshotPolicy,
    load_config,
    parse_config,
)
from supervisor import nodeconfig
from supervisor.cluster import Cluster
from supervisor.nodeconfig import STDIN_PATH, NodeConfigError, render
from supervisor.sender import RefusedError, Sender
from tests.conftest import write_cluster_yaml
from tests.supervisor.conftest import FAKE_NODE, REAL_NODE_EXISTS, assert_gone, write_config

REPO = Path(__file__).resolve().parents[2]


def every_setting(config: ClusterConfig) -> ClusterConfig:
    """config with every nested setting away from its default."""
    changed = dataclasses.replace(
        config,
        raft=RaftTimings(
            heartbeat_ms=40,
            election_timeout_ms=(250, 500),
            tick_ms=5,
            max_append_bytes=65536,
            max_inflight=32,
        ),
        snapshot=SnapshotPolicy(entries=123, bytes=4567),
        chat=ChatLimits(
            max_username_chars=20,
            max_text_chars=300,
            queue_limit=77,
            history_per_pair=88,
            session_idle_s=99,
            client_idle_s=111,
            page_size=5,
            max_page_size=6,
        ),
        scrypt=ScryptCost(n=32, r=4, p=2),
    )
    for section in (changed.raft, changed.snapshot, changed.chat, changed.scrypt):
        default = type(section)()
        same = [
            f.name
            for f in dataclasses.fields(section)
            if getattr(section, f.name) == getattr(default, f.name)
        ]
        assert not same, f"{type(section).__name__}: {same} left at the default"
    return changed


def round_trip(config: ClusterConfig) -> ClusterConfig:
    return parse_config(render(config), config.path)


def settings(config: ClusterConfig) -> ClusterConfig:
    """config without its warnings, which the loader derives from the settings (a relocation
    with dataclasses.replace keeps the old ones)."""
    return dataclasses.replace(config, warnings=())


def test_the_repository_cluster_yaml_comes_back_the_same() -> None:
    config = load_config(REPO / "cluster.yaml")
    assert round_trip(config) == config


def test_every_setting_comes_back_the_same(tmp_path: Path) -> None:
    loaded = load_config(write_cluster_yaml(tmp_path, "abcd", key=True))
    assert loaded.warnings and round_trip(loaded) == loaded  # four nodes: warned again, the same
    config = every_setting(loaded)
    assert settings(round_trip(config)) == settings(config)
    keyed = dataclasses.replace(
        config, cluster_key=None, cluster_key_file=tmp_path / "secret" / "key"
    )
    assert settings(round_trip(keyed)) == settings(keyed)
    certified = dataclasses.replace(config, tls_dir=tmp_path / "certs")
    assert settings(round_trip(certified)) == settings(certified)
    plain = dataclasses.replace(config, plaintext=True)
    assert settings(round_trip(plain)) == settings(plain)


def test_a_relocated_configuration_comes_back_relocated(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    moved = dataclasses.replace(
        config,
        data_dir=tmp_path / "elsewhere",
        leader="b",
        chat=dataclasses.replace(config.chat, queue_limit=10_000_000),
    )
    again = round_trip(moved)
    assert settings(again) == settings(moved) and again.data_dir == tmp_path / "elsewhere"
    assert again.chat.queue_limit == 10_000_000 and again.leader == "b"


def test_a_relocation_the_loader_refuses_is_refused(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    broken = dataclasses.replace(config, raft=RaftTimings(heartbeat_ms=500))
    with pytest.raises(NodeConfigError, match=r"not valid: .*raft\.heartbeat_ms"):
        render(broken)
    with pytest.raises(NodeConfigError, match="page_size"):
        render(dataclasses.replace(config, chat=ChatLimits(page_size=10, max_page_size=5)))


def test_a_setting_it_does_not_write_is_an_error_not_a_silent_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a new ClusterConfig field looks like to render before nodeconfig learns it."""
    config = every_setting(load_config(write_cluster_yaml(tmp_path)))
    write_everything = nodeconfig.document

    def forgetful(config: ClusterConfig) -> dict[str, Any]:
        result = write_everything(config)
        del result["snapshot"]
        return result

    monkeypatch.setattr(nodeconfig, "document", forgetful)
    with pytest.raises(NodeConfigError, match="snapshot would not survive"):
        render(config)


def test_a_cluster_of_a_relocated_config_runs_its_nodes_on_it(tmp_path: Path) -> None:
    path = write_config(tmp_path / "given")
    moved = dataclasses.replace(load_config(path), data_dir=tmp_path / "scratch")
    cluster = Cluster(moved, node_command=FAKE_NODE, stop_grace_s=3)
    pids: list[int] = []
    try:
        cluster.start()
        pids = list(cluster.pids().values())
        command_line = psutil.Process(cluster.pid("a")).cmdline()
        assert command_line[command_line.index("--config") + 1] == STDIN_PATH
        assert (tmp_path / "scratch" / "cluster.key").exists()
        assert (tmp_path / "scratch" / "b" / "node.log").exists()
        assert cluster.wait_leader(10) == "a"
        cluster.kill("b")
        pids.append(cluster.start_node("b"))  # every run is handed the configuration again
        assert cluster.wait_leader(10) in "abc"
    finally:
        cluster.close()
        assert_gone(pids)
    assert not (tmp_path / "given" / "data").exists()  # the file's data_dir: never touched
    assert sorted(tmp_path.rglob("*.yaml")) == [path]  # no cluster.yaml written anywhere


@pytest.mark.cluster
@pytest.mark.skipif(not REAL_NODE_EXISTS, reason="node/__main__.py not written yet")
async def test_real_nodes_run_on_a_relocated_config(tmp_path: Path) -> None:
    """The nodes keep their data where the relocated config says, and enforce its chat limits
    (a queue of 2), not the file's."""
    path = write_config(tmp_path / "given")
    config = load_config(path)
    moved = dataclasses.replace(
        config,
        data_dir=tmp_path / "scratch",
        chat=dataclasses.replace(config.chat, queue_limit=2),
    )
    with Cluster(moved, stop_grace_s=3) as cluster:
        assert (tmp_path / "scratch" / "a").is_dir()
        addresses = {n: cluster.address(n) for n in cluster.node_ids}
        leader = cluster.wait_leader(15)
        async with Sender(addresses, leader=leader, tls=cluster.credentials) as client:
            for name in ("ann", "bob"):
                await client.register(name, "pw", timeout_s=10)
            token = await client.login("ann", "pw", timeout_s=10)
            for _ in range(2):
                await client.send(token, "bob", "x", timeout_s=10)
            with pytest.raises(RefusedError) as refused:
                await client.send(token, "bob", "x", timeout_s=10)
            assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not (tmp_path / "given" / "data").exists()
    assert sorted(tmp_path.rglob("*.yaml")) == [path]
