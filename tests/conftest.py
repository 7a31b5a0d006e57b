"""Shared fixtures. Each real resource (temp data dir, free ports, processes) gets a fixture
that cleans up what it started."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from node.config import TOOL_NAME, ClusterConfig, certificate_name, load_config
from supervisor.ports import free_port

__all__ = [
    "cluster_ca",
    "free_port",
    "node_channel",
    "node_channel_sync",
    "peer_channel",
    "peer_channel_sync",
    "write_cluster_yaml",
]

ASYNC_TEST_TIMEOUT_S = 110.0  # under pytest-timeout's 120 s


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests each in its own event loop (grpc.aio objects belong to the loop
    that made them; pytest-asyncio is not a dependency), with a time limit."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**arguments), ASYNC_TEST_TIMEOUT_S)

    asyncio.run(run())
    return True


def write_cluster_yaml(
    directory: Path,
    ids: str = "abc",
    *,
    name: str = "test",
    leader: str | None = "a",
    key: bool = False,
    extra: str = "",
) -> Path:
    """A cluster.yaml in `directory`: nodes named by the letters of `ids`, each on two
    distinct free 127.0.0.1 ports (port and peer_port), data in directory/data, a cheap scrypt
    cost, and `extra` YAML sections. Without `key`, whoever starts the cluster (`supervisor
    up`, Cluster) writes the key file; without a `tls` section in extra, it makes the CA and
    certificates under data/tls."""
    directory.mkdir(parents=True, exist_ok=True)
    ports: list[int] = []
    while len(ports) < 2 * len(ids):
        port = free_port(avoid=ports)
        ports.append(port)
    nodes = "\n".join(
        f"  {n}: {{host: 127.0.0.1, port: {ports[2 * i]}, peer_port: {ports[2 * i + 1]}}}"
        for i, n in enumerate(ids)
    )
    text = f"cluster: {name}\n"
    if key:
        text += "cluster_key: test-key\n"
    if leader is not None:
        text += f"leader: {leader}\n"
    text += "data_dir: ./data\n"
    text += "chat:\n  scrypt: {n: 16, r: 8, p: 1}\n"
    text += extra
    text += f"nodes:\n{nodes}\n"
    path = directory / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it may hold the cluster key (an inline key readable by others: a warning)
    return path


# -- TLS channels to test clusters' nodes ------------------------------------------------------


def _config(config: ClusterConfig | Path | str) -> ClusterConfig:
    return config if isinstance(config, ClusterConfig) else load_config(config)


def cluster_ca(config: ClusterConfig | Path | str) -> bytes:
    """The PEM of the test cluster's CA (data/tls/ca.pem once the cluster has started)."""
    files = _config(config).tls
    if files is None:
        raise AssertionError("a `tls: plaintext` cluster has no CA")
    return files.ca.read_bytes()


def node_channel(
    config: ClusterConfig | Path | str, address: str, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An aio channel to a node's client port, TLS with the test cluster's CA (what every
    test that talks to a node uses); plaintext to a `tls: plaintext` cluster."""
    if _config(config).tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    credentials = grpc.ssl_channel_credentials(root_certificates=cluster_ca(config))
    return grpc.aio.secure_channel(address, credentials, options=list(options))


def node_channel_sync(
    config: ClusterConfig | Path | str, address: str, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """node_channel, blocking."""
    credentials = grpc.ssl_channel_credentials(root_certificates=cluster_ca(config))
    return grpc.secure_channel(address, credentials, options=list(options))


def _peer_credentials(
    config: ClusterConfig | Path | str, node_id: str, certificate: str, address: str | None
) -> tuple[grpc.ChannelCredentials, str, str]:
    """(credentials presenting `certificate`, node_id's member name, the address to dial)."""
    loaded = _config(config)
    files = loaded.tls
    if files is None:
        raise AssertionError("a `tls: plaintext` cluster has no certificates")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key(certificate).read_bytes(),
        certificate_chain=files.cert(certificate).read_bytes(),
    )
    name = certificate_name(node_id, loaded.cluster)
    return credentials, name, address or loaded.node(node_id).peer_address


def peer_channel(
    config: ClusterConfig | Path | str,
    node_id: str,
    *,
    certificate: str = TOOL_NAME,
    address: str | None = None,
) -> grpc.aio.Channel:
    """An aio channel to node_id's peer port (mutual TLS) presenting the test cluster's
    certificate of `certificate` (a node id, or the tools' certificate), checked against
    node_id's member name."""
    credentials, name, target = _peer_credentials(config, node_id, certificate, address)
    return grpc.aio.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", name)]
    )


def peer_channel_sync(
    config: ClusterConfig | Path | str,
    node_id: str,
    *,
    certificate: str = TOOL_NAME,
    address: str | None = None,
) -> grpc.Channel:
    """peer_channel, blocking (address: a link proxy's, say)."""
    credentials, name, target = _peer_credentials(config, node_id, certificate, address)
    return grpc.secure_channel(
        target,
        credentials,
        options=[("grpc.ssl_target_name_override", name), ("grpc.enable_http_proxy", 0)],
    )
