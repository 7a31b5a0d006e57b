"""node/config.py: cluster.yaml is loaded into the right values, and every mistake in it is
rejected with a message naming the file, the key and what is wrong."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import (
    ChatLimits,
    ClusterConfig,
    ConfigError,
    NodeAddress,
    RaftTimings,
    ScryptCost,
    SnapshotPolicy,
    load_config,
    parse_config,
    read_cluster_key,
)

REPO = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "cluster": "chatbooth",
    "leader": "a",
    "data_dir": "./data",
    "raft": {"heartbeat_ms": 50, "election_timeout_ms": [300, 600]},
    "nodes": {
        "a": {"host": "127.0.0.1", "port": 8001, "peer_port": 9001},
        "b": {"host": "127.0.0.1", "port": 8002, "peer_port": 9002},
        "c": {"host": "127.0.0.1", "port": 8003, "peer_port": 9003},
    },
}

FULL = """\
cluster: booth-1
cluster_key: "s3cret"
leader: b
data_dir: /srv/chatbooth
raft:
  heartbeat_ms: 40
  election_timeout_ms: [200, 450]
  tick_ms: 20
  max_append_bytes: 65536
  max_inflight: 8
snapshot:
  entries: 500
  bytes: 4096
chat:
  queue_limit: 77
  session_idle_s: 60
  page_size: 10
  scrypt: {n: 1024, r: 4, p: 2}
nodes:
  x: {host: 10.0.0.1, port: 9001, peer_port: 9101}
  b: {host: "::1", port: 9002, peer_port: 9102}
  a: {host: node-a.example, port: 9003, peer_port: 9103}
"""

DELETE = object()  # as a value in `mutated`: remove the key


def mutated(changes: dict[str, Any]) -> dict[str, Any]:
    """BASE with each dotted key set to its value (or removed, for DELETE)."""
    document = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        where = document
        for name in parents:
            where = where.setdefault(name, {})
        if value is DELETE:
            del where[last]
        else:
            where[last] = value
    return document


def write(tmp_path: Path, document: dict[str, Any] | str, name: str = "cluster.yaml") -> Path:
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return str(raised.value)


def assert_names(message: str, path: Path, key: str, *problem: str) -> None:
    assert message.startswith(f"{path}: {key}: "), message
    for fragment in problem:
        assert fragment in message, message


# -- valid files -------------------------------------------------------------------------------


def test_full_file_round_trips_into_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    path.chmod(0o600)  # it holds an inline cluster key
    config = load_config(path)
    assert config == ClusterConfig(
        path=path,
        cluster="booth-1",
        leader="b",
        data_dir=Path("/srv/chatbooth"),
        raft=RaftTimings(
            heartbeat_ms=40,
            election_timeout_ms=(200, 450),
            tick_ms=20,
            max_append_bytes=65536,
            max_inflight=8,
        ),
        snapshot=SnapshotPolicy(entries=500, bytes=4096),
        chat=ChatLimits(queue_limit=77, session_idle_s=60, page_size=10),
        scrypt=ScryptCost(n=1024, r=4, p=2),
        nodes=(
            NodeAddress("x", "10.0.0.1", 9001, 9101),
            NodeAddress("b", "::1", 9002, 9102),
            NodeAddress("a", "node-a.example", 9003, 9103),
        ),
        cluster_key="s3cret",
        cluster_key_file=None,
        warnings=(
            f"{path}: chat.scrypt n=1024, r=4 is weaker than OWASP's n=2^17, r=8, p=1: fine "
            "for tests, not for real passwords",
        ),
    )
    assert config.node_ids == ("x", "b", "a")  # file order, not sorted
    assert config.node("a").address == "node-a.example:9003"
    assert config.node("b").address == "[::1]:9002"
    assert config.node("b").peer_address == "[::1]:9102"
    assert config.tls is not None and config.tls.directory == Path("/srv/chatbooth/tls")
    assert config.tls_generated
    assert config.node_dir("x") == Path("/srv/chatbooth/x")
    assert config.default_key_file == Path("/srv/chatbooth/cluster.key")
    assert (config.raft.heartbeat_ticks, config.raft.election_ticks_min) == (2, 10)
    assert config.raft.election_ticks_max == 23  # 450 / 20 = 22.5, rounded up


def test_parse_config_agrees_with_load_config(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    path.chmod(0o600)  # else load_config adds a warning about the inline key
    assert parse_config(FULL, path) == load_config(path)


def test_optional_sections_take_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, mutated({"leader": DELETE, "raft": DELETE}))
    config = load_config(path)
    assert config.leader is None
    assert config.raft == RaftTimings()
    assert config.snapshot == SnapshotPolicy(entries=10_000, bytes=64 * 2**20)
    assert config.chat == ChatLimits()
    assert config.scrypt == ScryptCost(n=2**17, r=8, p=1)  # OWASP's figure
    assert (config.cluster_key, config.cluster_key_file) == (None, None)


def test_empty_sections_take_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, mutated({"raft": None, "snapshot": None, "chat": {"scrypt": None}}))
    config = load_config(path)
    assert (config.raft, config.snapshot, config.scrypt) == (
        RaftTimings(),
        SnapshotPolicy(),
        ScryptCost(),
    )


def test_raft_ticks_round_up_and_are_at_least_one() -> None:
    timings = RaftTimings(heartbeat_ms=15, election_timeout_ms=(301, 600), tick_ms=10)
    assert timings.heartbeat_ticks == 2
    assert timings.election_ticks_min == 31
    assert timings.election_ticks_max == 60
    assert RaftTimings(heartbeat_ms=1, tick_ms=1000).heartbeat_ticks == 1


def test_relative_paths_resolve_against_the_yaml_directory_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        mutated({"data_dir": "state/../data", "cluster_key_file": "keys/cluster.key"}),
        name="conf/cluster.yaml",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.data_dir == tmp_path / "conf" / "data"
    assert config.cluster_key_file == tmp_path / "conf" / "keys" / "cluster.key"
    assert config.node_dir("b") == tmp_path / "conf" / "data" / "b"

    monkeypatch.chdir(tmp_path)  # a relative path to the YAML file itself
    config = load_config("conf/cluster.yaml")
    assert config.path == tmp_path / "conf" / "cluster.yaml"
    assert config.path.is_absolute()
    assert config.data_dir == tmp_path / "conf" / "data"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "somewhere" / "else"
    config = load_config(write(tmp_path, mutated({"data_dir": str(target)})))
    assert config.data_dir == target


@pytest.mark.parametrize(
    ("ids", "warning"),
    [
        (["a"], "a single node tolerates no failure"),
        (["a", "b"], "2 nodes tolerate 0 failed nodes, no more than 1 would"),
        (["a", "b", "c", "d"], "4 nodes tolerate 1 failed node, no more than 3 would"),
        (["a", "b", "c", "d", "e", "f"], "6 nodes tolerate 2 failed nodes, no more than 5 would"),
    ],
)
def test_a_single_node_or_an_even_count_is_allowed_with_a_warning(
    tmp_path: Path, ids: list[str], warning: str
) -> None:
    nodes = {
        node_id: {"host": "127.0.0.1", "port": 8001 + i, "peer_port": 9001 + i}
        for i, node_id in enumerate(ids)
    }
    path = write(tmp_path, mutated({"nodes": nodes}))
    config = load_config(path)
    assert config.node_ids == tuple(ids)
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith(f"{path}: nodes: ")
    assert warning in config.warnings[0]


@pytest.mark.parametrize("count", [3, 5, 7])
def test_an_odd_count_of_nodes_gives_no_warning(tmp_path: Path, count: int) -> None:
    nodes = {
        f"n{i}": {"host": "127.0.0.1", "port": 8001 + i, "peer_port": 9001 + i}
        for i in range(count)
    }
    config = load_config(write(tmp_path, mutated({"nodes": nodes, "leader": "n0"})))
    assert len(config.nodes) == count
    assert config.warnings == ()


def test_the_repository_cluster_yaml_loads() -> None:
    config = load_config(REPO / "cluster.yaml")
    assert config.cluster == "chatbooth"
    assert config.leader == "a"
    assert config.data_dir == REPO / "data"
    assert [node.address for node in config.nodes] == [
        "127.0.0.1:8001",
        "127.0.0.1:8002",
        "127.0.0.1:8003",
    ]
    assert config.raft.election_timeout_ms == (200, 400)
    assert config.warnings == ()


def test_an_unknown_node_id_names_the_known_ones(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    with pytest.raises(ConfigError) as raised:
        config.node("d")
    assert "no node 'd'" in str(raised.value)
    assert "a, b, c" in str(raised.value)


def test_a_member_added_later_has_a_directory_and_a_bad_id_none(tmp_path: Path) -> None:
    """Members added after the cluster formed are in no `nodes`, but have a data directory;
    an id that is not one (a path, say) never names a directory."""
    config = load_config(write(tmp_path, BASE))
    assert config.node_dir("d") == config.data_dir / "d"
    for bad in ("../etc", "", "a/b", "."):
        with pytest.raises(ConfigError, match="is not a node id"):
            config.node_dir(bad)


# -- every kind of mistake ---------------------------------------------------------------------

EIGHT_NODES = {
    f"n{i}": {"host": "127.0.0.1", "port": 8001 + i, "peer_port": 9001 + i} for i in range(8)
}

MISTAKES = [
    # unknown keys, with the valid ones listed
    ({"leeder": "a"}, "leeder", ["unknown key", "did you mean 'leader'?", "cluster, "]),
    ({"raft.heartbeat": 50}, "raft.heartbeat", ["unknown key", "heartbeat_ms, election"]),
    (
        {"nodes.b.hots": "x"},
        "nodes.b.hots",
        ["unknown key", "valid keys in nodes.b: host, port, peer_port"],
    ),
    ({"snapshot.entires": 5}, "snapshot.entires", ["unknown key", "entries, bytes"]),
    ({"chat.queue": 5}, "chat.queue", ["unknown key", "queue_limit", "scrypt"]),
    ({"chat.scrypt.q": 5}, "chat.scrypt.q", ["unknown key", "n, r, p"]),
    # wrong types
    ({"nodes.b.port": "abc"}, "nodes.b.port", ["must be an integer from 1 to 65535, got 'abc'"]),
    ({"nodes.b.port": True}, "nodes.b.port", ["must be an integer from 1 to 65535, got True"]),
    ({"nodes.b.port": 8002.0}, "nodes.b.port", ["must be an integer", "got 8002.0"]),
    ({"nodes.b.host": 17}, "nodes.b.host", ["must be a string", "got 17"]),
    ({"nodes.b.host": "a b"}, "nodes.b.host", ["must be a host name or address"]),
    ({"nodes.b": "127.0.0.1:8002"}, "nodes.b", ["must be a mapping", "'127.0.0.1:8002'"]),
    ({"cluster": 5}, "cluster", ["must be a string", "got 5"]),
    ({"cluster": ""}, "cluster", ["must not be empty"]),
    ({"data_dir": ["x"]}, "data_dir", ["must be a string", "got ['x']"]),
    ({"raft": [50]}, "raft", ["must be a mapping", "heartbeat_ms", "got [50]"]),
    ({"nodes": ["a", "b"]}, "nodes", ["must be a mapping of node id", "got ['a', 'b']"]),
    ({"raft.heartbeat_ms": "50"}, "raft.heartbeat_ms", ["must be a positive integer, got '50'"]),
    ({"raft.heartbeat_ms": False}, "raft.heartbeat_ms", ["must be a positive integer"]),
    ({"leader": False}, "leader", ["must be a node id (quote it in YAML), got False"]),
    # missing required keys
    ({"cluster": DELETE}, "cluster", ["required key is missing"]),
    ({"data_dir": DELETE}, "data_dir", ["required key is missing"]),
    ({"nodes": DELETE}, "nodes", ["required key is missing"]),
    ({"data_dir": None}, "data_dir", ["required key has no value"]),
    ({"nodes.b.host": DELETE}, "nodes.b.host", ["required key is missing"]),
    ({"nodes.b.port": DELETE}, "nodes.b.port", ["required key is missing"]),
    ({"nodes.b.peer_port": DELETE}, "nodes.b.peer_port", ["required key is missing"]),
    ({"nodes.b.peer_port": 0}, "nodes.b.peer_port", ["from 1 to 65535, got 0"]),
    ({"nodes.b.peer_port": 8002}, "nodes.b.peer_port", ["must differ from port (8002)"]),
    ({"nodes.c.peer_port": 9001}, "nodes.c.peer_port", ["node 'a' already uses 127.0.0.1:9001"]),
    ({"nodes.c.peer_port": 8001}, "nodes.c.peer_port", ["node 'a' already uses 127.0.0.1:8001"]),
    ({"nodes.c.port": 9002}, "nodes.c.port", ["node 'b' already uses 127.0.0.1:9002"]),
    ({"nodes.tool": {"host": "h", "port": 9, "peer_port": 10}}, "nodes.tool", ["tools'"]),
    ({"tls": "plain"}, "tls", ["must be 'plaintext' or a mapping {dir: PATH}, got 'plain'"]),
    ({"tls": None}, "tls", ["has no value"]),
    ({"tls": {}}, "tls.dir", ["required key is missing"]),
    ({"tls": {"ca": "x"}}, "tls.ca", ["unknown key", "valid keys in tls: dir"]),
    ({"cluster": "my_booth"}, "cluster", ["names certificates", "got 'my_booth'"]),
    # node count, ids and addresses
    ({"nodes": {}}, "nodes", ["must list 1 to 7 nodes, got 0"]),
    ({"nodes": EIGHT_NODES}, "nodes", ["must list 1 to 7 nodes, got 8"]),
    ({"nodes": None}, "nodes", ["required key has no value"]),
    (
        {"nodes.a b": {"host": "h", "port": 9, "peer_port": 10}},
        "nodes.a b",
        ["node ids are 1 to 32 characters"],
    ),
    (
        {"nodes.B": {"host": "h", "port": 9, "peer_port": 10}},
        "nodes.B",
        ["same id as node 'b' but for case"],
    ),
    ({"nodes.b.port": 0}, "nodes.b.port", ["from 1 to 65535, got 0"]),
    ({"nodes.b.port": 65536}, "nodes.b.port", ["from 1 to 65535, got 65536"]),
    ({"nodes.c.port": 8001}, "nodes.c.port", ["node 'a' already uses 127.0.0.1:8001"]),
    ({"nodes.c.host": "127.0.0.1", "nodes.c.port": 8002}, "nodes.c.port", ["node 'b'"]),
    ({"leader": "d"}, "leader", ["must name a node (a, b, c), got 'd'"]),
    # raft timings
    ({"raft.heartbeat_ms": 0}, "raft.heartbeat_ms", ["must be a positive integer, got 0"]),
    (
        {"raft.heartbeat_ms": 300},
        "raft.heartbeat_ms",
        ["must be less than the minimum election timeout (300 ms), got 300"],
    ),
    ({"raft.election_timeout_ms": 300}, "raft.election_timeout_ms", ["[min, max]", "got 300"]),
    ({"raft.election_timeout_ms": [300]}, "raft.election_timeout_ms", ["[min, max]", "[300]"]),
    (
        {"raft.election_timeout_ms": [300, 400, 500]},
        "raft.election_timeout_ms",
        ["must be a list [min, max] of milliseconds, got [300, 400, 500]"],
    ),
    ({"raft.election_timeout_ms": [300, "600"]}, "raft.election_timeout_ms", ["[min, max]"]),
    ({"raft.election_timeout_ms": [True, 600]}, "raft.election_timeout_ms", ["[min, max]"]),
    ({"raft.election_timeout_ms": [600, 300]}, "raft.election_timeout_ms", ["0 < min < max"]),
    ({"raft.election_timeout_ms": [300, 300]}, "raft.election_timeout_ms", ["0 < min < max"]),
    ({"raft.election_timeout_ms": [0, 300]}, "raft.election_timeout_ms", ["0 < min < max"]),
    ({"raft.tick_ms": 0}, "raft.tick_ms", ["must be a positive integer, got 0"]),
    ({"raft.tick_ms": 51}, "raft.tick_ms", ["must be at most heartbeat_ms (50 ms), got 51"]),
    (
        {"raft.tick_ms": 40, "raft.election_timeout_ms": [60, 600]},
        "raft.tick_ms",
        ["heartbeat (2 ticks) no shorter than the minimum election timeout (2 ticks)"],
    ),
    (
        {"raft.tick_ms": 50, "raft.election_timeout_ms": [260, 290]},
        "raft.tick_ms",
        ["leave no range in election_timeout_ms [260, 290] (both are 6 ticks)"],
    ),
    # positive limits
    ({"raft.max_append_bytes": 0}, "raft.max_append_bytes", ["from 1 to 3145728, got 0"]),
    ({"raft.max_append_bytes": 4 << 20}, "raft.max_append_bytes", ["from 1 to 3145728"]),
    ({"raft.max_inflight": 0}, "raft.max_inflight", ["must be a positive integer, got 0"]),
    ({"snapshot.entries": 0}, "snapshot.entries", ["must be a positive integer, got 0"]),
    ({"snapshot.bytes": -1}, "snapshot.bytes", ["must be a positive integer, got -1"]),
    ({"chat.queue_limit": 0}, "chat.queue_limit", ["must be a positive integer, got 0"]),
    ({"chat.session_idle_s": "1w"}, "chat.session_idle_s", ["positive integer, got '1w'"]),
    ({"chat.page_size": 2000}, "chat.page_size", ["at most max_page_size (1000), got 2000"]),
    # scrypt
    ({"chat.scrypt.n": 1000}, "chat.scrypt.n", ["power of two from 2^4 to 2^20", "got 1000"]),
    ({"chat.scrypt.n": 1}, "chat.scrypt.n", ["power of two from 2^4 to 2^20", "got 1"]),
    ({"chat.scrypt.n": 2}, "chat.scrypt.n", ["power of two from 2^4 to 2^20", "got 2"]),
    ({"chat.scrypt.n": 0}, "chat.scrypt.n", ["power of two from 2^4 to 2^20", "got 0"]),
    ({"chat.scrypt.n": 2**30}, "chat.scrypt.n", ["power of two from 2^4 to 2^20", "1073741824"]),
    ({"chat.scrypt.n": "16384"}, "chat.scrypt.n", ["power of two", "got '16384'"]),
    ({"chat.scrypt.r": 0}, "chat.scrypt.r", ["must be an integer from 1 to 32, got 0"]),
    ({"chat.scrypt.r": 64}, "chat.scrypt.r", ["must be an integer from 1 to 32, got 64"]),
    ({"chat.scrypt.p": 0}, "chat.scrypt.p", ["must be an integer from 1 to 16, got 0"]),
    (
        {"chat.scrypt.n": 2**20, "chat.scrypt.r": 16},
        "chat.scrypt",
        ["needs 2048 MiB per hash; the limit is 1024 MiB"],
    ),
    ({"chat.scrypt": [16384, 8, 1]}, "chat.scrypt", ["must be a mapping", "n, r, p"]),
    # the cluster key
    (
        {"cluster_key": "k", "cluster_key_file": "f"},
        "cluster_key_file",
        ["cannot be set together with cluster_key"],
    ),
    ({"cluster_key": "  "}, "cluster_key", ["must not be empty"]),
    ({"cluster_key": 12345}, "cluster_key", ["must be a string (quote it in YAML), got 12345"]),
    ({"cluster_key_file": ""}, "cluster_key_file", ["must not be empty"]),
]


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    MISTAKES,
    ids=[f"{key}-{i}" for i, (_, key, _) in enumerate(MISTAKES)],
)
def test_a_mistake_names_the_file_the_key_and_the_problem(
    tmp_path: Path, changes: dict[str, Any], key: str, problem: list[str]
) -> None:
    path = write(tmp_path, mutated(changes))
    assert_names(error_of(path), path, key, *problem)


@pytest.mark.parametrize(
    ("node_id", "shown"),
    [
        ("x" * 33, "nodes." + "x" * 33),
        ("a.b", "nodes.a.b"),
        ("ä", "nodes.ä"),
    ],
)
def test_a_node_id_must_match_the_pattern(tmp_path: Path, node_id: str, shown: str) -> None:
    document = mutated({})
    document["nodes"][node_id] = {"host": "127.0.0.1", "port": 8009, "peer_port": 9009}
    path = write(tmp_path, document)
    assert_names(error_of(path), path, shown, "1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'")


def test_a_node_id_that_yaml_reads_as_another_type_must_be_quoted(tmp_path: Path) -> None:
    text = write(tmp_path, BASE).read_text().replace("  c:", "  on:")  # YAML 1.1: on is True
    path = write(tmp_path, text)
    assert_names(error_of(path), path, "nodes.True", "must be strings (quote it in YAML)")


def test_a_node_id_of_32_characters_is_allowed(tmp_path: Path) -> None:
    node_id = "A-z_9" + "x" * 27
    document = mutated({"nodes.c": DELETE})
    document["nodes"][node_id] = {"host": "127.0.0.1", "port": 8003, "peer_port": 9003}
    assert load_config(write(tmp_path, document)).node_ids == ("a", "b", node_id)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty; it must be a mapping with cluster, data_dir, nodes"),
        ("# only a comment\n", "the file is empty"),
        ("- cluster\n- nodes\n", "must be a mapping (keys: cluster, "),
        ("chatbooth\n", "got 'chatbooth'"),
    ],
)
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    assert_names(error_of(path), path, "top level", problem)


def test_a_yaml_syntax_error_carries_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster: chatbooth\ndata_dir: ./data\nnodes:\n  a: {host: h, port: 1\n")
    message = error_of(path)
    assert message.startswith(f"{path}: line 5, column 1: invalid YAML: "), message
    assert "expected ',' or '}'" in message


def test_a_tab_indent_is_a_yaml_error_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster: chatbooth\nraft:\n\theartbeat_ms: 50\n")
    assert error_of(path).startswith(f"{path}: line 3, column 1: invalid YAML: ")


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    text = (
        yaml.safe_dump(BASE, sort_keys=False)
        + "  b: {host: 127.0.0.1, port: 8009, peer_port: 9009}\n"
    )
    path = write(tmp_path, text)
    line = text.splitlines().index("  b:") + 1
    last = len(text.splitlines())
    assert error_of(path) == (
        f"{path}: line {last}, column 3: invalid YAML: duplicate key 'b' (first at line {line})"
    )


def test_a_python_tag_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster: !!python/object/apply:os.getcwd []\n")
    assert error_of(path).startswith(f"{path}: line 1, column 10: invalid YAML: ")


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file"
    monkeypatch.chdir(tmp_path)
    assert error_of(Path("nope.yaml")) == f"nope.yaml: no such file (relative to {tmp_path})"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, not a cluster.yaml file"


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_bytes(b"cluster: \xff\n")
    assert error_of(path) == f"{path}: not UTF-8 text (byte 9)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    path.chmod(0)
    assert error_of(path) == f"{path}: cannot read: Permission denied"


# -- the cluster key ---------------------------------------------------------------------------


def test_the_key_comes_from_cluster_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, mutated({"cluster_key": "sésame "})))
    assert read_cluster_key(config) == "sésame ".encode()


def test_the_key_comes_from_cluster_key_file_stripped(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_bytes(b"  abc123\n\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cluster.key").write_bytes(b"not this one\n")
    config = load_config(write(tmp_path, mutated({"cluster_key_file": "secret.key"})))
    assert config.cluster_key_file == tmp_path / "secret.key"
    assert read_cluster_key(config) == b"  abc123"


def test_the_key_comes_from_the_default_key_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    config.default_key_file.parent.mkdir()
    config.default_key_file.write_bytes(b"f00d\n")
    assert config.default_key_file == tmp_path / "data" / "cluster.key"
    assert read_cluster_key(config) == b"f00d"


def test_no_key_anywhere_says_how_to_get_one(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    config = load_config(path)
    with pytest.raises(ConfigError) as raised:
        read_cluster_key(config)
    assert str(raised.value).startswith(
        f"no cluster key: set cluster_key or cluster_key_file in {path}, or run "
        f"`python -m supervisor up {path}`, which creates data_dir/cluster.key"
    )


def test_a_missing_cluster_key_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, mutated({"cluster_key_file": "gone.key"}))
    with pytest.raises(ConfigError) as raised:
        read_cluster_key(load_config(path))
    assert str(raised.value) == f"{path}: cluster_key_file: {tmp_path / 'gone.key'}: no such file"


@pytest.mark.parametrize("content", [b"", b" \n\t\n"])
@pytest.mark.parametrize("source", ["cluster_key_file", "default"])
def test_an_empty_key_file_is_named(tmp_path: Path, content: bytes, source: str) -> None:
    changes = {"cluster_key_file": "data/k.key"} if source == "cluster_key_file" else {}
    config = load_config(write(tmp_path, mutated(changes)))
    key_file = config.cluster_key_file or config.default_key_file
    key_file.parent.mkdir()
    key_file.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        read_cluster_key(config)
    assert f"{key_file}: cluster key file is empty" in str(raised.value)


@pytest.mark.parametrize("source", ["cluster_key_file", "default"])
def test_an_unreadable_key_file_is_named(tmp_path: Path, source: str) -> None:
    changes = {"cluster_key_file": "data/k.key"} if source == "cluster_key_file" else {}
    config = load_config(write(tmp_path, mutated(changes)))
    key_file = config.cluster_key_file or config.default_key_file
    key_file.mkdir(parents=True)  # a directory: unreadable as a file, even for root
    with pytest.raises(ConfigError) as raised:
        read_cluster_key(config)
    assert f"{key_file}: cluster key file is a directory" in str(raised.value)
    if source == "cluster_key_file":
        assert str(raised.value).startswith(f"{config.path}: cluster_key_file: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_key_file_without_permission_is_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, mutated({"cluster_key_file": "k.key"})))
    (tmp_path / "k.key").write_bytes(b"k")
    (tmp_path / "k.key").chmod(0)
    with pytest.raises(ConfigError) as raised:
        read_cluster_key(config)
    assert f"{tmp_path / 'k.key'}: cannot read the cluster key: Permission denied" in str(
        raised.value
    )


def test_an_inline_cluster_key_in_a_file_others_can_read_gets_a_warning(tmp_path: Path) -> None:
    """Issue 11: nothing secret rests where other users can read it."""
    path = write(tmp_path, FULL)  # FULL has an inline cluster_key
    path.chmod(0o644)
    assert any("cluster_key is inline" in w for w in load_config(path).warnings)
    path.chmod(0o600)
    assert not any("cluster_key is inline" in w for w in load_config(path).warnings)


def test_tls_dir_is_relative_to_the_file_and_plaintext_warns(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, mutated({"tls": {"dir": "certs"}})))
    assert config.tls is not None and config.tls.directory == tmp_path / "certs"
    assert config.tls.cert("a") == tmp_path / "certs" / "a.pem"
    assert config.tls.key("a") == tmp_path / "certs" / "a.key"
    assert config.tls.ca == tmp_path / "certs" / "ca.pem"
    assert not config.tls_generated
    plain = load_config(write(tmp_path, mutated({"tls": "plaintext"}), "plain.yaml"))
    assert plain.tls is None and plain.plaintext
    assert any("tls: plaintext" in w for w in plain.warnings)
    # A plaintext cluster names no certificate, so its name need not be a DNS label.
    load_config(write(tmp_path, mutated({"tls": "plaintext", "cluster": "a_b"}), "p2.yaml"))
