"""The configuration a Cluster hands its nodes: a `ClusterConfig` as cluster.yaml text.

Tools and tests relocate a loaded configuration with `dataclasses.replace` (data in a temporary
directory, a longer queue, other ports) instead of rewriting cluster.yaml. A node, though, is
a separate process whose only input is YAML (`python -m node --config PATH`), so the Cluster
gives it this text on its stdin (`--config /dev/stdin`): no file is written, nothing stale is
left behind, and every node runs exactly the configuration the Cluster holds.

`render` refuses a configuration that would not come back whole: it parses its own output with
node.config's loader and compares. A field added to ClusterConfig that this module does not yet
write, or a relocation that breaks a rule the loader checks, is an error here, never a node
running something other than what the supervisor thinks.

Imports node.config (the one loader), PyYAML and supervisor.errors only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final

import yaml

from node.config import ClusterConfig, ConfigError, parse_config
from supervisor.errors import SupervisorError

# Where a node reads the configuration it is handed (a pipe the supervisor writes and closes).
STDIN_PATH: Final = "/dev/stdin"

# Fields of ClusterConfig that are not written: where it was read from, and what the loader
# derives from the rest (warnings name the file, and follow from the node count).
_DERIVED: Final = frozenset({"path", "warnings"})


class NodeConfigError(SupervisorError):
    """A ClusterConfig that cannot be handed to nodes as cluster.yaml text."""


def _plain(value: object) -> Any:
    """value with tuples as lists and paths as strings (what safe_dump can write)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def document(config: ClusterConfig) -> dict[str, Any]:
    """The cluster.yaml mapping of config: every setting explicit, every path absolute."""
    result: dict[str, Any] = {"cluster": config.cluster}
    if config.leader is not None:
        result["leader"] = config.leader
    result["data_dir"] = str(config.data_dir)
    if config.cluster_key is not None:
        result["cluster_key"] = config.cluster_key
    if config.cluster_key_file is not None:
        result["cluster_key_file"] = str(config.cluster_key_file)
    result["raft"] = _plain(dataclasses.asdict(config.raft))
    result["snapshot"] = _plain(dataclasses.asdict(config.snapshot))
    result["chat"] = {
        **_plain(dataclasses.asdict(config.chat)),
        "scrypt": _plain(dataclasses.asdict(config.scrypt)),
    }
    if config.plaintext:
        result["tls"] = "plaintext"
    elif config.tls_dir is not None:
        result["tls"] = {"dir": str(config.tls_dir)}
    result["nodes"] = {
        node.id: {"host": node.host, "port": node.port, "peer_port": node.peer_port}
        for node in config.nodes
    }
    return result


def render(config: ClusterConfig) -> str:
    """config as cluster.yaml text that node.config loads back to the same configuration;
    NodeConfigError naming what would not survive (or what the loader refuses)."""
    text = yaml.safe_dump(document(config), sort_keys=False)
    try:
        again = parse_config(text, config.path)
    except ConfigError as error:
        raise NodeConfigError(f"the configuration is not valid: {error}") from None
    lost = [
        field.name
        for field in dataclasses.fields(ClusterConfig)
        if field.name not in _DERIVED and getattr(again, field.name) != getattr(config, field.name)
    ]
    if lost:
        raise NodeConfigError(
            f"{config.path}: cannot hand the nodes this configuration: "
            f"{', '.join(lost)} would not survive as cluster.yaml "
            "(supervisor/nodeconfig.py does not write it)"
        )
    return text
