"""cluster.yaml -> frozen dataclasses: the one loader that node, supervisor and client share.

An invalid file is rejected here, before anything starts, with a `ConfigError` that names the
file, the key (`nodes.b.port`) and what is wrong; YAML syntax errors carry their line and column.
Only the cluster key is read lazily (`read_cluster_key`), because `supervisor up` may create it
after the configuration is loaded.

The `tls` section names where certificates are (or `tls: plaintext`); the files are read by
whoever serves or dials, never here.

Bottom of the layer map: imports nothing from chatbooth (stdlib and PyYAML only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """Cost parameters of scrypt password hashes; stored beside every hash. The default is
    OWASP's figure (n=2^17, r=8, p=1: 128 MiB and a few hundred ms per hash)."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    @property
    def memory_bytes(self) -> int:
        """What one hash needs (OpenSSL: 128*r*(n+2) for V plus 128*r*p for B)."""
        return 128 * self.r * (self.n + self.p + 2)


SCRYPT_N_RANGE = (2**4, 2**20)  # 2^4 only for tests; 2^20 at r=8 is 1 GiB per hash
SCRYPT_R_RANGE = (1, 32)
SCRYPT_P_RANGE = (1, 16)
SCRYPT_MAX_MEMORY = 1 << 30
OWASP_SCRYPT = (2**17, 8)  # n*r below this is weaker than OWASP's recommendation


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Limits of the chat state machine. Times are in log time (leader timestamps)."""

    max_username_chars: int = 32
    max_text_chars: int = 4096
    # Retention, not memory guards: the state is on disk (SQLite), and these bound its size.
    queue_limit: int = 100_000  # undelivered (unacked) messages per recipient
    history_per_pair: int = 1_000_000  # most recent messages kept per conversation
    session_idle_s: int = 7 * 24 * 3600
    client_idle_s: int = 3600  # forget a client's dedup entry after this long idle
    page_size: int = 100
    max_page_size: int = 1000


class ConfigError(Exception):
    """cluster.yaml (or the cluster key it points to) is missing, unreadable or invalid.

    The message is meant for a person: `FILE: KEY: what is wrong`.
    """


MIN_NODES = 1
MAX_NODES = 7
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
# gRPC refuses messages over 4 MiB by default; an AppendEntries batch of max_append_bytes of
# entries plus its framing (and one entry larger than the limit, sent alone) must stay under it.
MAX_APPEND_BYTES_LIMIT = 3 * 2**20


def _host_port(host: str, port: int) -> str:
    """`host:port`, as gRPC takes it (an IPv6 host is bracketed)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where one node serves gRPC: `port` for clients (Chat, Health, reflection; server TLS),
    `peer_port` for members and tools (Raft, forwarded writes, digests; mutual TLS). Two ports
    because grpcio cannot ask for an optional client certificate."""

    id: str
    host: str
    port: int
    peer_port: int

    @property
    def address(self) -> str:
        """The client port's `host:port`, as gRPC takes it (an IPv6 host is bracketed)."""
        return _host_port(self.host, self.port)

    @property
    def peer_address(self) -> str:
        """The peer port's `host:port`."""
        return _host_port(self.host, self.peer_port)


CERT_DOMAIN = "chatbooth"
TOOL_NAME = "tool"  # the supervisor's and tools' client certificate; no node may be called so


def certificate_name(name: str, cluster: str) -> str:
    """The DNS name a certificate of the cluster carries for member (or tool) `name`:
    `<name>.<cluster>.chatbooth`. Peers are checked by it, never by address (TRAPS)."""
    return f"{name}.{cluster}.{CERT_DOMAIN}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the cluster's TLS credentials are: one directory holding `ca.pem`, and
    `<name>.pem` with `<name>.key` for every node and for the `tool` certificate."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def _ticks(ms: int, tick_ms: int) -> int:
    """Milliseconds in driver ticks, rounded up, at least one tick."""
    return max(1, -(-ms // tick_ms))


@dataclass(frozen=True, slots=True)
class RaftTimings:
    """Raft timing and flow control. The core counts ticks; the driver ticks every tick_ms."""

    heartbeat_ms: int = 50
    # [min, max): randomized per election. 200-400 ms measured (supervisor bench): failover
    # median ~310 ms, p90 ~390 ms, and no leader change in 60 s of full load on 2 cores;
    # 300-600 gave a ~460 ms median. Four heartbeats fit in the minimum.
    election_timeout_ms: tuple[int, int] = (200, 400)
    tick_ms: int = 10
    max_append_bytes: int = 2**20  # entry bytes per AppendEntries
    max_inflight: int = 256  # AppendEntries sent and not yet answered, per follower

    @property
    def heartbeat_ticks(self) -> int:
        return _ticks(self.heartbeat_ms, self.tick_ms)

    @property
    def election_ticks_min(self) -> int:
        return _ticks(self.election_timeout_ms[0], self.tick_ms)

    @property
    def election_ticks_max(self) -> int:
        return _ticks(self.election_timeout_ms[1], self.tick_ms)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When a node snapshots its state machine and compacts its log: whichever comes first."""

    entries: int = 10_000  # applied entries since the last snapshot
    bytes: int = 64 * 2**20  # bytes of log since the last snapshot


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A whole cluster.yaml, validated. Paths are absolute."""

    path: Path  # the YAML file itself
    cluster: str
    leader: str | None  # started first; campaigns at once on a fresh cluster
    data_dir: Path  # node X keeps its data under data_dir/X
    raft: RaftTimings
    snapshot: SnapshotPolicy
    chat: ChatLimits
    scrypt: ScryptCost
    nodes: tuple[NodeAddress, ...]  # in file order
    cluster_key: str | None  # at most one of cluster_key and cluster_key_file is set
    cluster_key_file: Path | None
    warnings: tuple[str, ...]  # allowed but unwise choices, for the caller to show
    # `tls: {dir: PATH}`; None: data_dir/tls, which `supervisor up` fills when it is empty
    tls_dir: Path | None = None
    plaintext: bool = False  # `tls: plaintext`: no TLS anywhere (an explicit opt-out)

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(node.id for node in self.nodes)

    def node(self, node_id: str) -> NodeAddress:
        """The node called node_id; ConfigError naming the known ids if there is none."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(self.node_ids)
        raise ConfigError(f"{self.path}: nodes: no node {node_id!r} (nodes are {known})")

    def node_dir(self, node_id: str) -> Path:
        """Where node node_id keeps its log and its output: one of `nodes`, or a member added
        later (any valid node id: it names a directory, never a path outside data_dir)."""
        if not NODE_ID_PATTERN.fullmatch(node_id):
            raise ConfigError(f"{self.path}: {node_id!r} is not a node id")
        return self.data_dir / node_id

    @property
    def tls(self) -> TlsFiles | None:
        """The TLS credentials' directory; None with `tls: plaintext`."""
        if self.plaintext:
            return None
        return TlsFiles(self.tls_dir if self.tls_dir is not None else self.data_dir / "tls")

    @property
    def tls_generated(self) -> bool:
        """Whether the credentials are the ones `supervisor up` makes (cluster.yaml names
        none), under data_dir/tls, never under a node's own directory."""
        return not self.plaintext and self.tls_dir is None

    @property
    def default_key_file(self) -> Path:
        """The key file `supervisor up` creates when cluster.yaml names no key."""
        return self.data_dir / "cluster.key"


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the cluster.yaml at path; ConfigError if it is missing or invalid."""
    path = Path(path)
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file{where}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a cluster.yaml file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    config = parse_config(text, path)
    if config.cluster_key is not None:
        with contextlib.suppress(OSError):
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                warning = (
                    f"{path}: cluster_key is inline in a file other users can read "
                    f"(mode {mode:o}): chmod 600 it, or use cluster_key_file"
                )
                config = dataclasses.replace(config, warnings=(*config.warnings, warning))
    return config


def parse_config(text: str, path: Path) -> ClusterConfig:
    """Validate the YAML text of a cluster.yaml; path names it in errors and anchors relative
    paths (a relative data_dir or cluster_key_file is relative to the file's directory)."""
    label = str(path)
    try:
        # The loader class is ours (duplicate keys rejected), and a subclass of SafeLoader.
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        raise ConfigError(f"{label}: {_describe_yaml_error(error)}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{label}: invalid YAML: {error}") from None
    return _Validator(label, Path(os.path.abspath(path))).cluster(document)


def read_cluster_key(config: ClusterConfig) -> bytes:
    """The cluster key: cluster_key, else cluster_key_file, else data_dir/cluster.key if it
    exists. ConfigError if there is none, or if the key file is unreadable or empty."""
    if config.cluster_key is not None:
        return config.cluster_key.encode("utf-8")
    if config.cluster_key_file is not None:
        key = _read_key_file(config.cluster_key_file, f"{config.path}: cluster_key_file: ")
        if key is None:
            raise ConfigError(
                f"{config.path}: cluster_key_file: {config.cluster_key_file}: no such file"
            )
        return key
    key = _read_key_file(config.default_key_file, "")
    if key is None:
        raise ConfigError(
            f"no cluster key: set cluster_key or cluster_key_file in {config.path}, or run "
            f"`python -m supervisor up {config.path}`, which creates data_dir/cluster.key "
            f"({config.default_key_file})"
        )
    return key


def _read_key_file(path: Path, prefix: str) -> bytes | None:
    """The stripped key in path, or None if there is no such file."""
    try:
        key = path.read_bytes().rstrip()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"{prefix}{path}: cluster key file is a directory") from None
    except OSError as error:
        problem = error.strerror or str(error)
        raise ConfigError(f"{prefix}{path}: cannot read the cluster key: {problem}") from None
    if not key:
        raise ConfigError(f"{prefix}{path}: cluster key file is empty")
    return key


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last one
    silently, so `nodes:` with `b` twice would quietly be a smaller cluster)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; its keys may be overridden on purpose
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    first = seen[key].start_mark
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _describe_yaml_error(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = error.problem or error.context or "invalid YAML"
    context = ""
    if error.context and error.problem:
        context = f" ({error.context}"
        if error.context_mark:
            context += f" at line {error.context_mark.line + 1}"
            context += f", column {error.context_mark.column + 1}"
        context += ")"
    return f"{where}invalid YAML: {problem}{context}"


_TOP_KEYS = (
    "cluster",
    "cluster_key",
    "cluster_key_file",
    "leader",
    "data_dir",
    "raft",
    "snapshot",
    "chat",
    "tls",
    "nodes",
)
_REQUIRED_TOP_KEYS = ("cluster", "data_dir", "nodes")
_RAFT_KEYS = tuple(f.name for f in dataclasses.fields(RaftTimings))
_SNAPSHOT_KEYS = tuple(f.name for f in dataclasses.fields(SnapshotPolicy))
_CHAT_LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(ChatLimits))
_CHAT_KEYS = (*_CHAT_LIMIT_KEYS, "scrypt")
_SCRYPT_KEYS = tuple(f.name for f in dataclasses.fields(ScryptCost))
_NODE_KEYS = ("host", "port", "peer_port")
_TLS_KEYS = ("dir",)
PLAINTEXT = "plaintext"
# A cluster name is part of every certificate's DNS name: labels of letters, digits, '-'.
CLUSTER_NAME_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class _Validator:
    """Checks one parsed document; every failure names the file and the key path."""

    def __init__(self, label: str, path: Path) -> None:
        self.label = label  # the file as the caller named it, for messages
        self.path = path  # absolute
        self.base = path.parent  # relative paths in the file are relative to this

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.label}: {key}: {problem}")

    # -- generic checks ------------------------------------------------------------------

    def mapping(
        self,
        value: object,
        key: str,
        valid: Sequence[str],
        required: Sequence[str] = (),
    ) -> dict[str, Any]:
        """value as a mapping with string keys, all of them in valid, none of required missing.
        A section left empty (`raft:` and nothing under it) is an empty mapping."""
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping (keys: {', '.join(valid)}), got {_show(value)}")
        result: dict[str, Any] = {}
        inside = f" in {key}" if key != "top level" else " at the top level"
        for name, item in value.items():
            path = name if key == "top level" else f"{key}.{name}"
            if not isinstance(name, str):
                self.fail(path, f"keys must be strings, got {_show(name)}")
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(path, f"unknown key{hint}; valid keys{inside}: {', '.join(valid)}")
            result[name] = item
        for name in required:
            path = name if key == "top level" else f"{key}.{name}"
            if name not in result:
                self.fail(path, "required key is missing")
            if result[name] is None:
                self.fail(path, "required key has no value")
        return result

    def integer(self, value: object, key: str, low: int, high: int | None = None) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            if high is not None:
                self.fail(key, f"must be an integer from {low} to {high}, got {_show(value)}")
            if low == 1:
                self.fail(key, f"must be a positive integer, got {_show(value)}")
            self.fail(key, f"must be an integer of at least {low}, got {_show(value)}")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            self.fail(key, f"must be a string (quote it in YAML), got {_show(value)}")
        if not value.strip():
            self.fail(key, "must not be empty")
        return value

    def file_path(self, value: object, key: str) -> Path:
        """An absolute path; a relative one is relative to the YAML file's directory."""
        text = os.path.expanduser(self.string(value, key))
        return Path(os.path.normpath(self.base / text))

    # -- sections ------------------------------------------------------------------------

    def cluster(self, document: object) -> ClusterConfig:
        if document is None:
            required = ", ".join(_REQUIRED_TOP_KEYS)
            self.fail("top level", f"the file is empty; it must be a mapping with {required}")
        top = self.mapping(document, "top level", _TOP_KEYS, _REQUIRED_TOP_KEYS)
        cluster = self.string(top["cluster"], "cluster")
        tls_dir, plaintext = self.tls(top.get("tls"), "tls" in top)
        if not plaintext and not CLUSTER_NAME_PATTERN.fullmatch(cluster):
            self.fail(
                "cluster",
                "names certificates (<id>.<cluster>.chatbooth), so it must be 1 to 63 letters, "
                f"digits and '-' (not first or last), got {cluster!r}",
            )
        data_dir = self.file_path(top["data_dir"], "data_dir")

        cluster_key: str | None = None
        cluster_key_file: Path | None = None
        if top.get("cluster_key") is not None and top.get("cluster_key_file") is not None:
            self.fail("cluster_key_file", "cannot be set together with cluster_key; keep one")
        if top.get("cluster_key") is not None:
            cluster_key = self.string(top["cluster_key"], "cluster_key")
        if top.get("cluster_key_file") is not None:
            cluster_key_file = self.file_path(top["cluster_key_file"], "cluster_key_file")

        nodes, warnings = self.nodes(top["nodes"])
        ids = [node.id for node in nodes]
        leader: str | None = None
        if top.get("leader") is not None:
            leader = top["leader"]
            if not isinstance(leader, str):
                self.fail("leader", f"must be a node id (quote it in YAML), got {_show(leader)}")
            if leader not in ids:
                self.fail("leader", f"must name a node ({', '.join(ids)}), got {leader!r}")

        chat, scrypt = self.chat(top.get("chat"))
        if plaintext:
            warnings = (
                *warnings,
                f"{self.label}: tls: plaintext: nothing is encrypted or authenticated; anyone "
                "who can reach a port can read the traffic and act as a member",
            )
        if scrypt.n * scrypt.r < OWASP_SCRYPT[0] * OWASP_SCRYPT[1]:
            warnings = (
                *warnings,
                f"{self.path}: chat.scrypt n={scrypt.n}, r={scrypt.r} is weaker than OWASP's "
                "n=2^17, r=8, p=1: fine for tests, not for real passwords",
            )
        return ClusterConfig(
            path=self.path,
            cluster=cluster,
            leader=leader,
            data_dir=data_dir,
            raft=self.raft(top.get("raft")),
            snapshot=self.snapshot(top.get("snapshot")),
            chat=chat,
            scrypt=scrypt,
            nodes=nodes,
            cluster_key=cluster_key,
            cluster_key_file=cluster_key_file,
            warnings=warnings,
            tls_dir=tls_dir,
            plaintext=plaintext,
        )

    def tls(self, value: object, present: bool) -> tuple[Path | None, bool]:
        """(tls_dir, plaintext) of the `tls` key: absent, `plaintext`, or `{dir: PATH}`."""
        if not present:
            return None, False
        if value == PLAINTEXT:
            return None, True
        if isinstance(value, str):
            self.fail("tls", f"must be {PLAINTEXT!r} or a mapping {{dir: PATH}}, got {value!r}")
        if value is None:
            self.fail("tls", f"has no value: give {{dir: PATH}} or {PLAINTEXT!r}, or remove it")
        section = self.mapping(value, "tls", _TLS_KEYS, _TLS_KEYS)
        return self.file_path(section["dir"], "tls.dir"), False

    def nodes(self, value: object) -> tuple[tuple[NodeAddress, ...], tuple[str, ...]]:
        if not isinstance(value, dict):
            problem = "must be a mapping of node id to {host, port, peer_port}"
            self.fail("nodes", f"{problem}, got {_show(value)}")
        count = len(value)
        if not MIN_NODES <= count <= MAX_NODES:
            self.fail("nodes", f"must list {MIN_NODES} to {MAX_NODES} nodes, got {count}")
        nodes: list[NodeAddress] = []
        by_folded_id: dict[str, str] = {}
        by_address: dict[tuple[str, int], str] = {}  # (host, port) -> "node 'a'"
        for node_id, spec in value.items():
            key = f"nodes.{node_id}"
            if not isinstance(node_id, str):
                self.fail(key, f"node ids must be strings (quote it in YAML), got {node_id!r}")
            if not NODE_ID_PATTERN.fullmatch(node_id):
                self.fail(key, "node ids are 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'")
            if node_id.casefold() in by_folded_id:
                other = by_folded_id[node_id.casefold()]
                self.fail(
                    key,
                    f"same id as node {other!r} but for case (their data directories would be "
                    "one on a case-insensitive file system)",
                )
            if node_id.casefold() == TOOL_NAME:
                self.fail(key, f"{TOOL_NAME!r} names the tools' certificate; choose another id")
            by_folded_id[node_id.casefold()] = node_id
            fields = self.mapping(spec, key, _NODE_KEYS, _NODE_KEYS)
            host = self.string(fields["host"], f"{key}.host")
            if any(c.isspace() for c in host):
                self.fail(f"{key}.host", f"must be a host name or address, got {host!r}")
            port = self.integer(fields["port"], f"{key}.port", 1, 65535)
            peer_port = self.integer(fields["peer_port"], f"{key}.peer_port", 1, 65535)
            if peer_port == port:
                self.fail(
                    f"{key}.peer_port",
                    f"must differ from port ({port}): clients and peers need a port each",
                )
            for name, number in (("port", port), ("peer_port", peer_port)):
                where = (host.lower(), number)
                if where in by_address:
                    other = by_address[where]
                    self.fail(f"{key}.{name}", f"{other} already uses {host}:{number}")
                by_address[where] = f"node {node_id!r}"
            nodes.append(NodeAddress(node_id, host, port, peer_port))

        warnings: list[str] = []
        if count == 1:
            warnings.append(
                f"{self.label}: nodes: a single node tolerates no failure; use 3 or 5 nodes"
            )
        elif count % 2 == 0:
            tolerated = (count - 1) // 2
            warnings.append(
                f"{self.label}: nodes: {count} nodes tolerate {tolerated} failed node"
                f"{'s' if tolerated != 1 else ''}, no more than {count - 1} would; "
                "an odd count is better"
            )
        return tuple(nodes), tuple(warnings)

    def raft(self, value: object) -> RaftTimings:
        section = self.mapping(value, "raft", _RAFT_KEYS)
        default = RaftTimings()
        election = default.election_timeout_ms
        if "election_timeout_ms" in section:
            election = self.election_timeout(section["election_timeout_ms"])
        heartbeat_ms = default.heartbeat_ms
        if "heartbeat_ms" in section:
            heartbeat_ms = self.integer(section["heartbeat_ms"], "raft.heartbeat_ms", 1)
        if heartbeat_ms >= election[0]:
            self.fail(
                "raft.heartbeat_ms",
                f"must be less than the minimum election timeout ({election[0]} ms), "
                f"got {heartbeat_ms}",
            )
        tick_ms = default.tick_ms
        if "tick_ms" in section:
            tick_ms = self.integer(section["tick_ms"], "raft.tick_ms", 1)
        if tick_ms > heartbeat_ms:
            self.fail(
                "raft.tick_ms", f"must be at most heartbeat_ms ({heartbeat_ms} ms), got {tick_ms}"
            )
        timings = RaftTimings(
            heartbeat_ms=heartbeat_ms,
            election_timeout_ms=election,
            tick_ms=tick_ms,
            max_append_bytes=self.integer(
                section.get("max_append_bytes", default.max_append_bytes),
                "raft.max_append_bytes",
                1,
                MAX_APPEND_BYTES_LIMIT,
            ),
            max_inflight=self.integer(
                section.get("max_inflight", default.max_inflight), "raft.max_inflight", 1
            ),
        )
        # Timeouts become whole ticks (rounded up): coarse ticks can erase the gaps checked above.
        if timings.heartbeat_ticks >= timings.election_ticks_min:
            self.fail(
                "raft.tick_ms",
                f"{tick_ms} ms ticks make the heartbeat ({timings.heartbeat_ticks} ticks) no "
                f"shorter than the minimum election timeout ({timings.election_ticks_min} ticks)",
            )
        if timings.election_ticks_min >= timings.election_ticks_max:
            self.fail(
                "raft.tick_ms",
                f"{tick_ms} ms ticks leave no range in election_timeout_ms {list(election)} "
                f"(both are {timings.election_ticks_min} ticks); elections need a random timeout",
            )
        return timings

    def election_timeout(self, value: object) -> tuple[int, int]:
        key = "raft.election_timeout_ms"
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(ms, int) and not isinstance(ms, bool) for ms in value)
        ):
            self.fail(key, f"must be a list [min, max] of milliseconds, got {_show(value)}")
        low, high = value
        if not 0 < low < high:
            self.fail(key, f"must be [min, max] with 0 < min < max, got {_show(value)}")
        return (low, high)

    def snapshot(self, value: object) -> SnapshotPolicy:
        section = self.mapping(value, "snapshot", _SNAPSHOT_KEYS)
        default = SnapshotPolicy()
        return SnapshotPolicy(
            entries=self.integer(section.get("entries", default.entries), "snapshot.entries", 1),
            bytes=self.integer(section.get("bytes", default.bytes), "snapshot.bytes", 1),
        )

    def chat(self, value: object) -> tuple[ChatLimits, ScryptCost]:
        section = self.mapping(value, "chat", _CHAT_KEYS)
        limits = {
            name: self.integer(item, f"chat.{name}", 1)
            for name, item in section.items()
            if name != "scrypt"
        }
        chat = ChatLimits(**limits)
        if chat.page_size > chat.max_page_size:
            self.fail(
                "chat.page_size",
                f"must be at most max_page_size ({chat.max_page_size}), got {chat.page_size}",
            )
        return chat, self.scrypt(section.get("scrypt"))

    def scrypt(self, value: object) -> ScryptCost:
        section = self.mapping(value, "chat.scrypt", _SCRYPT_KEYS)
        default = ScryptCost()
        n = section.get("n", default.n)
        low, high = SCRYPT_N_RANGE
        if not isinstance(n, int) or isinstance(n, bool) or not low <= n <= high or n & (n - 1):
            self.fail(
                "chat.scrypt.n",
                f"must be a power of two from 2^4 to 2^20 ({low} to {high}), got {_show(n)}",
            )
        cost = ScryptCost(
            n=n,
            r=self.integer(section.get("r", default.r), "chat.scrypt.r", *SCRYPT_R_RANGE),
            p=self.integer(section.get("p", default.p), "chat.scrypt.p", *SCRYPT_P_RANGE),
        )
        if cost.memory_bytes > SCRYPT_MAX_MEMORY:
            self.fail(
                "chat.scrypt",
                f"n={cost.n}, r={cost.r}, p={cost.p} needs {cost.memory_bytes >> 20} MiB per "
                f"hash; the limit is {SCRYPT_MAX_MEMORY >> 20} MiB",
            )
        return cost


def _show(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return f"a mapping {value!r}"
    return repr(value)


# -- the peers override file ----------------------------------------------------------------
# data_dir/N/peers: where node N reaches members added after the cluster formed (node.peers).

PEERS_FILE = "peers"


class PeersFileError(ValueError):
    """The override file is unreadable or malformed (the message says which and why)."""


def _check_peer_address(path: Path, node: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or ":" not in value or value.rsplit(":", 1)[1] == "":
        raise PeersFileError(f"{path}: {node}.{key}: expected HOST:PORT, got {value!r}")
    port = value.rsplit(":", 1)[1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise PeersFileError(f"{path}: {node}.{key}: port {port!r} is not 1-65535")
    return value


def read_peers_file(path: Path) -> dict[str, tuple[str, str]]:
    """{node: (peer address, client address)} from the override file; {} if there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise PeersFileError(f"{path}: cannot read it: {error}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise PeersFileError(f"{path}: not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise PeersFileError(f"{path}: expected an object of node ids, got {type(doc).__name__}")
    out: dict[str, tuple[str, str]] = {}
    for node, entry in doc.items():
        if not NODE_ID_PATTERN.fullmatch(node):
            raise PeersFileError(f"{path}: {node!r} is not a node id")
        if not isinstance(entry, dict) or set(entry) != {"peer", "client"}:
            raise PeersFileError(f"{path}: {node}: expected exactly `peer` and `client`")
        out[node] = (
            _check_peer_address(path, node, "peer", entry["peer"]),
            _check_peer_address(path, node, "client", entry["client"]),
        )
    return out


def write_peers_file(path: Path, peers: Mapping[str, tuple[str, str]]) -> None:
    """Replace the override file atomically (the supervisor's side; durable on return)."""
    doc = {node: {"peer": p, "client": c} for node, (p, c) in sorted(peers.items())}
    write_json_atomically(path, doc)


def write_json_atomically(path: Path, doc: object) -> None:
    """Replace `path` with `doc` as JSON (mode 0600): written to a new file, fsynced, renamed
    over `path` and the directory fsynced, so a crash leaves the old file or the new one."""
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)  # a crash left it: O_EXCL below makes it ours, 0600
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(doc, file, indent=1)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    staged.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
