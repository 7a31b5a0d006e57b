"""The member record: which cluster a data directory belongs to, and who this member is in it.

    data_dir/MEMBER      one line of canonical JSON, then one line with its crc32 (hex)

A node that lost its data must never come back silently as the member it was: the cluster may
remember votes it cast and entries it acknowledged, which its empty disk no longer has (Raft
assumes stable storage is never lost; a member that forgot its vote may vote twice in a term).
So a data directory holds a MEMBER record from the moment it first joins a cluster, and a node
whose directory has none does not start unless told how to form or join one (node.__main__).

The record holds
- `cluster_id`: the cluster's identity, made once by whoever forms it (`supervisor up` writes
  it to data_dir/cluster.id); Raft traffic between different clusters is refused;
- `incarnation`: which incarnation of this member's name the directory is: 0 for a member that
  formed the cluster, else the index of the CONFIG entry that added it (the add is made
  first, and the member is started with its incarnation: `--join ID --incarnation N`);
- `initial_voters`: the configuration the cluster was formed with (bootstrap members only), the
  base configuration before any snapshot or CONFIG entry says otherwise: it is recorded once
  and never read from cluster.yaml again.

Written atomically through the file layer (a new file, fsynced, renamed over the old one, the
directory fsynced): after a crash it is the old record or the new one, never a mix. A record
whose checksum fails is corruption, reported with the file and what is wrong.

Standard library only; must not import anything from chatbooth beyond node.storage.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from node.storage.errors import StorageCorruptedError
from node.storage.files import FileSystem

MEMBER_NAME = "MEMBER"
_STAGED_NAME = "MEMBER.new"
FORMAT = 1
_KEYS = {"cluster_id", "format", "incarnation", "initial_voters"}


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """Which cluster a data directory belongs to, and which incarnation of its member it is."""

    cluster_id: str
    incarnation: int  # 0: formed the cluster; else the index of the entry that added it
    initial_voters: tuple[str, ...] = ()  # the configuration it formed with; () if it joined

    def encode(self) -> bytes:
        doc = {
            "cluster_id": self.cluster_id,
            "format": FORMAT,
            "incarnation": self.incarnation,
            "initial_voters": list(self.initial_voters),
        }
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return body + b"\n" + f"{zlib.crc32(body):08x}".encode() + b"\n"


def decode_member(path: Path, raw: bytes) -> MemberRecord:
    """The record in `raw` (the bytes of `path`); StorageCorruptedError if it is damaged."""
    lines = raw.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise StorageCorruptedError(path, 0, "a member record is two lines: JSON and its crc32")
    body, crc = lines[0], lines[1]
    if crc != f"{zlib.crc32(body):08x}".encode():
        raise StorageCorruptedError(path, len(body) + 1, "member record checksum mismatch")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageCorruptedError(path, 0, f"member record is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != _KEYS:
        raise StorageCorruptedError(path, 0, f"member record needs exactly {sorted(_KEYS)}")
    if doc["format"] != FORMAT:
        raise StorageCorruptedError(path, 0, f"member record format {doc['format']!r}")
    cluster_id, incarnation, voters = doc["cluster_id"], doc["incarnation"], doc["initial_voters"]
    if not isinstance(cluster_id, str) or not cluster_id:
        raise StorageCorruptedError(path, 0, f"member record cluster_id {cluster_id!r}")
    if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
        raise StorageCorruptedError(path, 0, f"member record incarnation {incarnation!r}")
    if not isinstance(voters, list) or not all(isinstance(v, str) and v for v in voters):
        raise StorageCorruptedError(path, 0, f"member record initial_voters {voters!r}")
    return MemberRecord(cluster_id, incarnation, tuple(voters))


def read_member(fs: FileSystem, data_dir: Path) -> MemberRecord | None:
    """The directory's member record, or None if it has none."""
    path = data_dir / MEMBER_NAME
    if not fs.exists(path):
        return None
    return decode_member(path, fs.read_bytes(path))


def write_member(fs: FileSystem, data_dir: Path, record: MemberRecord) -> None:
    """Replace the directory's member record atomically; durable on return."""
    staged = data_dir / _STAGED_NAME
    if fs.exists(staged):
        fs.remove(staged)  # a crash left it half written
    file = fs.open_append(staged)
    try:
        file.write(record.encode())
        file.sync()
    finally:
        file.close()
    fs.rename(staged, data_dir / MEMBER_NAME)
    fs.fsync_dir(data_dir)
