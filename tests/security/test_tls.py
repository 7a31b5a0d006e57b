"""TLS on every connection (issue 11, item 1), against real nodes: the client port refuses
plaintext, the peer port refuses anything but a certificate of the cluster's CA, a Raft
message must come from the member its certificate names, the digest is for the peer port,
and a tool outside the project needs nothing but the CA for health and reflection."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node.config import TlsFiles, certificate_name, load_config
from node.server import FORWARDED_KEY
from protos import chat_pb2, chat_pb2_grpc, raft_pb2, raft_pb2_grpc
from protos.vocabulary import CLUSTER_ID_KEY, CLUSTER_KEY_KEY
from supervisor.certs import issue_certificate, make_ca, write_certificate
from supervisor.cluster import Cluster
from tests.conftest import peer_channel
from tests.node.conftest import ROOT, NodeProcesses

pytestmark = pytest.mark.cluster

HEALTH = health_pb2.HealthCheckRequest(service="")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcesses]:
    """One running cluster for the module: these tests only ask and get refused."""
    cluster = NodeProcesses(tmp_path_factory.mktemp("tls"))
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


def _peer_port(nodes: NodeProcesses, n: str) -> str:
    return load_config(nodes.config).node(n).peer_address


async def _health(channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse:
    reply: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(channel).Check(
        HEALTH, timeout=3
    )
    return reply


async def test_a_plaintext_client_is_refused_on_the_client_port(nodes: NodeProcesses) -> None:
    async with grpc.aio.insecure_channel(nodes.address("a")) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _health(plain)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    async with nodes.channel("a") as tls:  # the same call with the CA: served
        assert (await _health(tls)).status == health_pb2.HealthCheckResponse.SERVING


async def test_the_peer_port_refuses_plaintext_no_certificate_and_another_ca(
    nodes: NodeProcesses, tmp_path: Path
) -> None:
    address = _peer_port(nodes, "a")
    name = ("grpc.ssl_target_name_override", certificate_name("a", "test"))
    ca = nodes.ca_path.read_bytes()
    refused = [
        grpc.aio.insecure_channel(address),
        # server TLS only: no client certificate
        grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca), options=[name]),
    ]
    # a certificate for "b" from a CA of its own
    ca_cert, ca_key = make_ca("test")
    cert, key = issue_certificate(ca_cert, ca_key, "test", "b", ["127.0.0.1"])
    foreign = TlsFiles(tmp_path)
    write_certificate(foreign, "b", cert, key)
    credentials = grpc.ssl_channel_credentials(
        ca, foreign.key("b").read_bytes(), foreign.cert("b").read_bytes()
    )
    refused.append(grpc.aio.secure_channel(address, credentials, options=[name]))
    for channel in refused:
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _health(channel)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    async with peer_channel(nodes.config, "a", certificate="b") as member:  # the real b: served
        assert (await _health(member)).status == health_pb2.HealthCheckResponse.SERVING


def _batch(sender: str, to: str) -> raft_pb2.MessageBatch:
    message = raft_pb2.RaftMessage(type=raft_pb2.HEARTBEAT_RESPONSE, sender=sender, to=to, term=0)
    initial = raft_pb2.Incarnations(sender=0)  # from an initial member
    return raft_pb2.MessageBatch(cluster="test", messages=[message], incarnations=initial)


async def _stream(
    channel: grpc.aio.Channel, batch: raft_pb2.MessageBatch, nodes: NodeProcesses
) -> None:
    async def batches() -> AsyncIterator[raft_pb2.MessageBatch]:
        yield batch

    assert nodes.cluster is not None
    metadata = ((CLUSTER_KEY_KEY, "test-key"), (CLUSTER_ID_KEY, nodes.cluster.cluster_id))
    await raft_pb2_grpc.RaftStub(channel).Stream(batches(), metadata=metadata, timeout=5)


async def test_a_raft_message_must_come_from_the_member_its_certificate_names(
    nodes: NodeProcesses,
) -> None:
    async with peer_channel(nodes.config, "a", certificate="b") as as_b:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _stream(as_b, _batch("c", "a"), nodes)  # b's certificate, c's name
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "a message from 'c' over a certificate for 127.0.0.1, b.test.chatbooth" in (
            caught.value.details() or ""
        )
        await _stream(as_b, _batch("b", "a"), nodes)  # b as itself (a stale term: ignored) is taken
    async with peer_channel(nodes.config, "a") as tool:  # the tools' certificate is no member
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _stream(tool, _batch("b", "a"), nodes)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_health_and_reflection_with_the_ca_alone(nodes: NodeProcesses) -> None:
    """What a tool outside the project (grpcurl, a load balancer) has: the CA, nothing else."""
    ca = nodes.ca_path.read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(nodes.address("b"), credentials) as channel:
        assert (await _health(channel)).status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        services = set()
        async for reply in stub.ServerReflectionInfo(ask(), timeout=5):
            services |= {s.name for s in reply.list_services_response.service}
    assert {"chatbooth.chat.Chat", "grpc.health.v1.Health"} <= services, services
    assert "chatbooth.raft.Raft" not in services  # Raft is on the peer port only


async def test_the_digest_is_served_on_the_peer_port_only(nodes: NodeProcesses) -> None:
    request = chat_pb2.StatusRequest(with_digest=True)
    async with nodes.channel("a") as client_port:
        stub = chat_pb2_grpc.ChatStub(client_port)
        assert (await stub.Status(chat_pb2.StatusRequest(), timeout=3)).node_id == "a"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Status(request, timeout=3)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    peer_port = load_config(nodes.config).node("a").peer_port
    assert f"peer port ({peer_port})" in (caught.value.details() or "")
    async with peer_channel(nodes.config, "a") as tool:
        reply = await chat_pb2_grpc.ChatStub(tool).Status(request, timeout=5)
    assert len(reply.state_digest) == 64


async def test_a_client_certificate_is_never_asked_for_on_the_client_port(
    nodes: NodeProcesses,
) -> None:
    """TRAPS "Expected": require_client_auth=False never requests a certificate, so a client
    that has one cannot present it there: the tool certificate gets no digest on that port."""
    files = load_config(nodes.config).tls
    assert files is not None
    credentials = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key("tool").read_bytes(), files.cert("tool").read_bytes()
    )
    async with grpc.aio.secure_channel(nodes.address("a"), credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chat_pb2_grpc.ChatStub(channel).Status(
                chat_pb2.StatusRequest(with_digest=True), timeout=3
            )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_forwarded_metadata_on_the_client_port_is_not_honoured(
    nodes: NodeProcesses,
) -> None:
    """A client claiming to be a forwarding member is served as a client: its follower
    forwards the call to the leader instead of refusing it as already forwarded."""
    leader = await nodes.wait_leader()
    follower = next(n for n in nodes.ids if n != leader)
    async with nodes.channel(follower) as channel:
        reply = await chat_pb2_grpc.ChatStub(channel).RegisterClient(
            chat_pb2.RegisterClientRequest(), metadata=((FORWARDED_KEY, "1"),), timeout=10
        )
    assert reply.client_id > 0
    async with peer_channel(nodes.config, follower, certificate=leader) as member:
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # from a member it is honoured
            await chat_pb2_grpc.ChatStub(member).RegisterClient(
                chat_pb2.RegisterClientRequest(), metadata=((FORWARDED_KEY, "1"),), timeout=10
            )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "not the leader" in (caught.value.details() or "")


def test_the_ca_and_keys_are_private_and_outlive_a_wiped_node(nodes: NodeProcesses) -> None:
    files = load_config(nodes.config).tls
    assert files is not None
    assert files.directory == nodes.tmp / "data" / "tls"  # beside the nodes, not in one
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for name in ("ca", "a", "b", "c", "tool"):
        assert stat.S_IMODE(files.key(name).stat().st_mode) == 0o600, name
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    for name in ("a", "b", "c", "tool"):
        cert = x509.load_pem_x509_certificate(files.cert(name).read_bytes())
        cert.verify_directly_issued_by(ca)
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert certificate_name(name, "test") in dns.get_values_for_type(x509.DNSName)


def test_supervisor_cert_issues_a_certificate_the_ca_verifies(
    nodes: NodeProcesses, tmp_path: Path
) -> None:
    out = tmp_path / "issued"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor",
            "cert",
            "z",
            "--host",
            "10.0.0.5",
            "--host",
            "z.example",
            "--config",
            str(nodes.config),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "z.test.chatbooth" in done.stdout
    ca = x509.load_pem_x509_certificate(nodes.ca_path.read_bytes())
    cert = x509.load_pem_x509_certificate((out / "z.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["z.test.chatbooth", "z.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert stat.S_IMODE((out / "z.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    again = subprocess.run(done.args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "not overwritten" in again.stderr


def test_a_wiped_cluster_keeps_its_ca(tmp_path: Path) -> None:
    """--fresh wipes the nodes' directories, never data_dir/tls."""
    cluster = NodeProcesses(tmp_path)
    try:
        cluster.start_all()
        first = cluster.ca_path.read_bytes()
    finally:
        cluster.close()
    with Cluster(cluster.config, fresh=True, links=False) as again:
        assert again.credentials is not None and again.credentials.ca == first
