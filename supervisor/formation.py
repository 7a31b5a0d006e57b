"""The cluster's identity and whether it has formed, as the supervisor records them in data_dir.

    data_dir/cluster.id       the cluster's id: made once, by the `up` that forms the cluster
    data_dir/cluster.formed   written when that cluster first elected a leader
    data_dir/members.json     the members added after it formed (`add`, `replace`): where
                              each serves, its incarnation (the index of the entry that
                              added it), and whether it has joined: `up` resumes them, and
                              passes --join only until the member first started; and the
                              members removed since (`up` starts them no more)

A node learns which cluster it belongs to on its first start: the supervisor passes
`--bootstrap ID` to the initial members until cluster.formed exists, and neither flag after it.
So a member whose data directory was wiped later does not form a new cluster of its own, nor
come back silently as the member it was: it exits (code 5) and is replaced (node.__main__). A
remote node joins with `--join ID`, the id read from cluster.id. `up --fresh` wipes both files
with the nodes' data: a new cluster gets a new id, and Raft traffic between the two is refused.

Standard library only, plus node.config.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from node.config import ClusterConfig, ConfigError, NodeAddress, write_json_atomically

ID_NAME = "cluster.id"
FORMED_NAME = "cluster.formed"
ADDED_NAME = "members.json"
ID_BYTES = 8  # 16 hex digits: ids are compared for equality, never guessed at


def id_file(config: ClusterConfig) -> Path:
    return config.data_dir / ID_NAME


def formed_file(config: ClusterConfig) -> Path:
    return config.data_dir / FORMED_NAME


def read_cluster_id(config: ClusterConfig) -> str | None:
    """The cluster's id from data_dir/cluster.id; None if there is none yet; ConfigError if
    the file cannot be read or is not one id."""
    path = id_file(config)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config.path}: data_dir: cannot read {path}: {error}") from None
    if not text or len(text.split()) != 1:
        raise ConfigError(f"{config.path}: data_dir: {path} must hold one cluster id")
    return text


def ensure_cluster_id(config: ClusterConfig) -> str:
    """The cluster's id, made (random) and written to data_dir/cluster.id if there is none."""
    existing = read_cluster_id(config)
    if existing is not None:
        return existing
    cluster_id = secrets.token_hex(ID_BYTES)
    _write_new(config, id_file(config), cluster_id + "\n")
    found = read_cluster_id(config)  # another supervisor may have written it first
    if found is None:
        raise ConfigError(f"{config.path}: data_dir: {id_file(config)} vanished")
    return found


def is_formed(config: ClusterConfig) -> bool:
    """Whether the cluster of data_dir has formed (elected its first leader)."""
    return formed_file(config).exists()


def record_formed(config: ClusterConfig, leader: str) -> None:
    """Note that the cluster has formed; from now on no member is started with --bootstrap."""
    if is_formed(config):
        return
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _write_new(config, formed_file(config), f"formed {now}, first leader {leader}\n")


def wipe(config: ClusterConfig) -> None:
    """`up --fresh`: forget the cluster's id, that it formed, and the members added to it."""
    for path in (id_file(config), formed_file(config), config.data_dir / ADDED_NAME):
        path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class AddedMember:
    """A member added after the cluster formed (or replaced): where it serves, its incarnation
    (0 until its add is made), and whether it has started once (until then it starts with
    --join ID --incarnation N)."""

    address: NodeAddress
    incarnation: int = 0
    joined: bool = False


def read_added(config: ClusterConfig) -> dict[str, AddedMember]:
    """The members added to the cluster of data_dir, in the order they were added."""
    return _read_members(config)[0]


def read_removed(config: ClusterConfig) -> set[str]:
    """The members removed from the cluster of data_dir."""
    return _read_members(config)[1]


def _read_members(config: ClusterConfig) -> tuple[dict[str, AddedMember], set[str]]:
    path = config.data_dir / ADDED_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, set()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{config.path}: data_dir: cannot read {path}: {error}") from None
    try:
        added = {
            node: AddedMember(
                NodeAddress(node, str(e["host"]), int(e["port"]), int(e["peer_port"])),
                int(e["incarnation"]),
                bool(e["joined"]),
            )
            for node, e in doc["added"].items()
        }
        return added, {str(n) for n in doc["removed"]}
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{config.path}: data_dir: {path} is malformed: {error!r}") from None


def write_added(
    config: ClusterConfig, added: dict[str, AddedMember], removed: set[str] | None = None
) -> None:
    """Replace data_dir/members.json (atomically, durably)."""
    doc = {
        "added": {
            node: {
                "host": m.address.host,
                "port": m.address.port,
                "peer_port": m.address.peer_port,
                "incarnation": m.incarnation,
                "joined": m.joined,
            }
            for node, m in added.items()
        },
        "removed": sorted(removed or ()),
    }
    write_json_atomically(config.data_dir / ADDED_NAME, doc)


def _write_new(config: ClusterConfig, path: Path, text: str) -> None:
    """Create `path` with `text` (0600), durably; nothing if it exists already."""
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise ConfigError(
            f"{config.path}: data_dir: cannot write {path}: {error.strerror or error}"
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    _fsync_dir(config.data_dir)


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
