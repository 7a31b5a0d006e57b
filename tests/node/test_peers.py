"""Where a node reaches the other members (node/peers.py, the peers file of node.config) and
how its links follow the configuration (GrpcTransport.sync_links): issue 14, "added members
stay behind the proxies"."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from node.config import PeersFileError, parse_config, read_peers_file, write_peers_file
from node.peers import PeerDirectory
from node.raft.types import ConfState, NodeId, SnapshotMeta
from node.seams import SnapshotSource
from node.transport import GrpcTransport

YAML = """
cluster: test
data_dir: data
tls: plaintext
cluster_key: test-key
nodes:
  a: {host: 127.0.0.1, port: 8001, peer_port: 9001}
  b: {host: 127.0.0.1, port: 8002, peer_port: 9002}
  c: {host: 127.0.0.1, port: 8003, peer_port: 9003}
"""


def directory(tmp_path: Path, overrides: dict[str, str] | None = None) -> PeerDirectory:
    config = parse_config(YAML, tmp_path / "cluster.yaml")
    return PeerDirectory(config, "a", overrides or {}, tmp_path / "peers")


def test_cluster_yaml_then_peer_flags_then_the_file(tmp_path: Path) -> None:
    peers = directory(tmp_path, {"b": "127.0.0.1:7002"})  # a proxy in front of b
    assert sorted(peers.known()) == ["b", "c"]  # never itself
    assert peers.peer_address("b") == "127.0.0.1:7002"
    assert peers.client_address("b") == "127.0.0.1:8002"  # clients dial b itself
    assert peers.peer_address("c") == "127.0.0.1:9003"
    assert peers.peer_address("d") is None
    write_peers_file(
        tmp_path / "peers",
        {"d": ("127.0.0.1:7004", "127.0.0.1:8004"), "a": ("127.0.0.1:1", "127.0.0.1:2")},
    )
    assert peers.reload() is True
    assert peers.peer_address("d") == "127.0.0.1:7004"
    assert peers.client_address("d") == "127.0.0.1:8004"
    assert "a" not in peers.known()  # its own entry in the file is ignored
    assert peers.reload() is False  # nothing changed
    (tmp_path / "peers").unlink()
    assert peers.reload() is True and peers.peer_address("d") is None


def test_the_file_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    write_peers_file(path, {"e": ("h:1", "h:2")})
    assert read_peers_file(path) == {"e": ("h:1", "h:2")}
    assert not (tmp_path / "peers.new").exists()
    assert read_peers_file(tmp_path / "absent") == {}


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("{", "not JSON"),
        ("[]", "expected an object of node ids"),
        ('{"b c": {"peer": "h:1", "client": "h:2"}}', "is not a node id"),
        ('{"d": {"peer": "h:1"}}', "d: expected exactly `peer` and `client`"),
        ('{"d": {"peer": "h", "client": "h:2"}}', "d.peer: expected HOST:PORT"),
        ('{"d": {"peer": "h:1", "client": "h:0"}}', "d.client: port '0' is not 1-65535"),
        ('{"d": {"peer": "h:x", "client": "h:2"}}', "d.peer: port 'x'"),
    ],
)
def test_a_bad_file_says_what_is_wrong(tmp_path: Path, text: str, what: str) -> None:
    (tmp_path / "peers").write_text(text)
    with pytest.raises(PeersFileError, match=what) as raised:
        directory(tmp_path)  # at start: the node exits 2 with this
    assert str(tmp_path / "peers") in str(raised.value)


def test_a_file_spoilt_later_keeps_the_addresses_read_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_peers_file(tmp_path / "peers", {"d": ("127.0.0.1:7004", "127.0.0.1:8004")})
    peers = directory(tmp_path)
    (tmp_path / "peers").write_text(json.dumps({"d": "nonsense"}))
    with caplog.at_level(logging.ERROR):
        assert peers.reload() is False
    assert "keeping the addresses read before" in caplog.text
    assert peers.peer_address("d") == "127.0.0.1:7004"


class Events:
    """The driver's side of the transport: only the configuration matters here."""

    def __init__(self, conf: ConfState) -> None:
        self.conf = conf

    def on_unreachable(self, peer: NodeId) -> None:
        pass

    def on_connected(self, peer: NodeId) -> None:
        pass

    def on_snapshot_sent(self, peer: NodeId, ok: bool) -> None:
        pass

    async def open_snapshot(self, meta: SnapshotMeta) -> SnapshotSource:
        raise AssertionError("no snapshots here")

    def peer_confs(self) -> tuple[ConfState, ...]:
        return (self.conf,)

    def own_incarnation(self) -> int:
        return 0


def conf(voters: str, learners: str = "") -> ConfState:
    return ConfState(tuple(NodeId(v) for v in voters), tuple(NodeId(v) for v in learners))


def test_links_follow_the_configuration_and_the_addresses(tmp_path: Path) -> None:
    """The links are the current configuration's members that have an address: an added
    member's link opens (dialling what the peers file says), a removed one's closes, one whose
    address changed is dialled anew, and a node that knows no configuration links to every
    node it knows (a joining member answers whoever calls)."""

    async def scenario() -> None:
        peers = directory(tmp_path)
        transport = GrpcTransport(
            node_id=NodeId("a"),
            peers=peers,
            cluster="test",
            key=b"k",
            credentials=None,
            cluster_id="",
        )
        events = Events(conf("abc"))
        transport.start(events)
        assert transport.linked() == {"b": "127.0.0.1:9002", "c": "127.0.0.1:9003"}

        events.conf = conf("abc", "d")  # d added, but nobody said where it is yet
        transport.sync_links()
        assert set(transport.linked()) == {"b", "c"}
        write_peers_file(tmp_path / "peers", {"d": ("127.0.0.1:7004", "127.0.0.1:8004")})
        peers.reload()
        transport.sync_links()
        assert transport.linked()["d"] == "127.0.0.1:7004"

        events.conf = conf("acd")  # b removed
        write_peers_file(tmp_path / "peers", {"d": ("127.0.0.1:7014", "127.0.0.1:8004")})
        peers.reload()
        transport.sync_links()
        assert transport.linked() == {"c": "127.0.0.1:9003", "d": "127.0.0.1:7014"}

        events.conf = ConfState(())  # knows none: every known node
        transport.sync_links()
        assert set(transport.linked()) == {"b", "c", "d"}
        await transport.close()

    asyncio.run(scenario())
