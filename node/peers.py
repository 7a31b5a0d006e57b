"""Where this node reaches the other members: their peer addresses (what it dials for Raft and
forwarded writes) and their client addresses (what it tells clients who ask for the leader).

Three sources, each overriding the one before:
1. cluster.yaml's `nodes` (the initial members);
2. `--peer ID=HOST:PORT` on the command line (the supervisor's link proxies);
3. the override file `data_dir/N/peers`, for members added after the cluster formed:

       {"d": {"peer": "127.0.0.1:9104", "client": "127.0.0.1:8104"}, ...}

   A CONFIG entry names members, never addresses that every node should dial: on one laptop
   the supervisor routes every link through a proxy of its own, so only it knows what node N
   should dial to reach d. It writes each node's file (atomically) before it proposes the add,
   and nodes read it again at every configuration change (node.__main__).

A file that cannot be read or is malformed is reported with what is wrong; at start that stops
the node (exit 2), later the addresses read before are kept, and the error is logged.

The file's format is node.config's (read_peers_file, write_peers_file), which the supervisor
shares. Imports node.config and the standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from node.config import ClusterConfig, PeersFileError, read_peers_file

logger = logging.getLogger(__name__)


class PeerDirectory:
    """The addresses of every member this node knows of (module doc)."""

    def __init__(
        self, config: ClusterConfig, me: str, overrides: Mapping[str, str], file: Path
    ) -> None:
        self.me = me
        self.file = file
        self._base = {n.id: (n.peer_address, n.address) for n in config.nodes if n.id != me}
        for node, address in overrides.items():
            self._base[node] = (address, self._base[node][1])
        self._peers = self._merged(read_peers_file(file))  # PeersFileError at start

    def _merged(self, extra: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """cluster.yaml and --peer, then the file's entries (never this node's own)."""
        peers = dict(self._base)
        peers.update((n, a) for n, a in extra.items() if n != self.me)
        return peers

    def reload(self) -> bool:
        """Read the override file again; whether any address changed. A bad file is logged
        and the addresses known before are kept."""
        try:
            peers = self._merged(read_peers_file(self.file))
        except PeersFileError as error:
            logger.error("%s; keeping the addresses read before", error)
            return False
        changed = peers != self._peers
        self._peers = peers
        return changed

    def known(self) -> Iterable[str]:
        """Every other node with an address."""
        return tuple(self._peers)

    def peer_address(self, node: str) -> str | None:
        entry = self._peers.get(node)
        return entry[0] if entry is not None else None

    def client_address(self, node: str) -> str | None:
        entry = self._peers.get(node)
        return entry[1] if entry is not None else None
