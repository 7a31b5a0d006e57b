"""supervisor/links.py: the proxies forward, a partition silences open and new connections both
ways (nothing read, nothing written), heal resets what was open across the cut, and slow adds
measurable latency. Plain asyncio echo servers stand in for nodes. (What a proxy costs,
benchmarks/links.py, is run here too: it measures these proxies.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from benchmarks.links import measure_cost
from supervisor.links import (
    Link,
    LinkError,
    LinkNetwork,
    crosses,
    format_groups,
    normalize_groups,
)

SILENCE_S = 0.2  # how long "nothing arrives" is watched for


@dataclass
class Echo:
    """An asyncio echo server that counts what reached it."""

    server: asyncio.Server
    accepted: int = 0
    received: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port


@asynccontextmanager
async def echo_server() -> AsyncIterator[Echo]:
    echo: Echo | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert echo is not None
        echo.accepted += 1
        echo.writers.append(writer)
        try:
            while data := await reader.read(65536):
                echo.received += len(data)
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    echo = Echo(server)
    try:
        yield echo
    finally:
        for writer in echo.writers:
            writer.close()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def proxied(echo: Echo) -> AsyncIterator[Link]:
    link = Link("x", "y", echo.address)
    await link.start()
    try:
        yield link
    finally:
        await link.close()


async def connect(link: Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", link.listen_port)


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), 5)


async def poll(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def is_silent(awaitable: Awaitable[bytes], timeout_s: float = SILENCE_S) -> bool:
    try:
        await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        return True
    return False


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


# -- one link -------------------------------------------------------------------------------


def test_forwards_both_ways_on_many_connections() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            streams = [await connect(link) for _ in range(5)]
            for index, (reader, writer) in enumerate(streams):
                payload = f"hello {index} ".encode() * 1000
                assert await round_trip(reader, writer, payload) == payload
            assert echo.accepted == 5
            for _, writer in streams:
                writer.close()
            await poll(lambda: link.open_connections == 0)

    run(test)


def test_large_transfer_keeps_every_byte_in_order() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            payload = bytes(range(256)) * (8 * 4096)  # 8 MiB

            async def send() -> None:
                writer.write(payload)
                await writer.drain()

            sender = asyncio.create_task(send())
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
            await sender
            assert echoed == payload
            writer.close()

    run(test)


def test_half_close_is_forwarded() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            writer.write(b"last words")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"last words"  # then EOF
            writer.close()

    run(test)


def test_cut_link_reads_nothing_and_writes_nothing_on_an_open_connection() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            assert await round_trip(reader, writer, b"before") == b"before"
            link.set_blocked(True)
            before = echo.received
            writer.write(b"during")
            assert await is_silent(reader.readexactly(6))
            assert echo.received == before  # nothing reached the target
            # Nothing is read from the dialler either: its writes back up and stall.
            writer.write(b"z" * (16 * 2**20))
            assert await is_silent(writer.drain())  # type: ignore[arg-type]
            assert link.queued_bytes == 0  # the proxy took none of it off the socket
            assert not writer.is_closing()  # held, not closed
            assert link.open_connections == 1
            writer.transport.abort()

    run(test)


def test_cut_link_reads_nothing_from_the_target_either() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            assert await round_trip(reader, writer, b"x") == b"x"
            link.set_blocked(True)
            await asyncio.sleep(0.05)
            server_writer = echo.writers[0]
            server_writer.write(b"from the target")
            assert await is_silent(reader.readexactly(15))
            server_writer.write(b"t" * (16 * 2**20))
            assert await is_silent(server_writer.drain())  # type: ignore[arg-type]
            assert link.queued_bytes == 0
            writer.transport.abort()

    run(test)


def test_cut_link_holds_new_connections_in_silence() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            link.set_blocked(True)
            reader, writer = await connect(link)  # accepted...
            writer.write(b"anyone?")
            assert await is_silent(reader.readexactly(7))  # ...and silent
            assert echo.accepted == 0  # nothing was dialled
            assert not writer.is_closing()
            writer.transport.abort()

    run(test)


def test_heal_resets_connections_open_across_the_cut_and_forwards_again() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            old_reader, old_writer = await connect(link)
            assert await round_trip(old_reader, old_writer, b"hi") == b"hi"
            link.set_blocked(True)
            new_reader, new_writer = await connect(link)  # made during the cut
            await poll(lambda: link.open_connections == 2)
            link.set_blocked(False)
            for reader in (old_reader, new_reader):
                with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                    await asyncio.wait_for(reader.readexactly(1), 5)
            await poll(lambda: link.open_connections == 0)
            reader, writer = await connect(link)
            assert await round_trip(reader, writer, b"again") == b"again"
            writer.close()
            old_writer.close()
            new_writer.close()

    run(test)


def test_data_sent_during_the_cut_never_arrives() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            assert await round_trip(reader, writer, b"a") == b"a"
            link.set_blocked(True)
            writer.write(b"lost")
            await asyncio.sleep(0.1)
            before = echo.received
            link.set_blocked(False)
            await asyncio.sleep(0.1)
            assert echo.received == before

    run(test)


def test_latency_is_added_each_way() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)

            async def median_rtt_s() -> float:
                samples = []
                for _ in range(5):
                    start = time.perf_counter()
                    await round_trip(reader, writer, b"ping")
                    samples.append(time.perf_counter() - start)
                return sorted(samples)[2]

            plain = await median_rtt_s()
            link.set_delay_ms(40)
            slowed = await median_rtt_s()
            assert slowed - plain >= 0.075  # 40 ms each way
            assert slowed < 1.0
            link.set_delay_ms(0)
            assert await median_rtt_s() < 0.03
            writer.close()

    run(test)


def test_latency_keeps_order_when_it_changes() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            link.set_delay_ms(60)
            writer.write(b"first,")
            await asyncio.sleep(0.01)
            link.set_delay_ms(0)
            writer.write(b"second")
            assert await asyncio.wait_for(reader.readexactly(12), 5) == b"first,second"
            writer.close()

    run(test)


def test_a_target_that_is_down_resets_the_dialler() -> None:
    async def test() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()  # bound, never listening: connections are refused
            link = Link("x", "y", dead)
            await link.start()
            try:
                reader, writer = await connect(link)
                with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                    await asyncio.wait_for(reader.readexactly(1), 5)
                writer.close()
                await poll(lambda: link.open_connections == 0)
            finally:
                await link.close()

    run(test)


def test_a_target_closing_ends_the_proxied_connection() -> None:
    async def test() -> None:
        async with echo_server() as echo, proxied(echo) as link:
            reader, writer = await connect(link)
            assert await round_trip(reader, writer, b"a") == b"a"
            echo.writers[0].close()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await poll(lambda: link.open_connections == 0)

    run(test)


def test_negative_latency_is_refused() -> None:
    with pytest.raises(LinkError, match="negative"):
        Link("x", "y", ("127.0.0.1", 1)).set_delay_ms(-1)


# -- partitions as groups -------------------------------------------------------------------


def test_groups_not_named_form_one_more_group() -> None:
    assert normalize_groups([["a"]], ("a", "b", "c")) == (("a",), ("b", "c"))
    assert normalize_groups([["c", "a"], ["b"]], ("a", "b", "c")) == (("a", "c"), ("b",))
    groups = normalize_groups([["a", "b"], ["d"]], ("a", "b", "c", "d", "e"))
    assert format_groups(groups) == "a,b | d | c,e"


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        ([["a", "b", "c"]], "at least two groups"),
        ([["a"], ["a", "b"]], "'a' is in two groups"),
        ([["a"], ["z"]], "no node 'z' \\(nodes are a, b, c\\)"),
        ([["a"], []], "group 2 is empty"),
    ],
)
def test_bad_groups_are_refused(groups: list[list[str]], problem: str) -> None:
    with pytest.raises(LinkError, match=problem):
        normalize_groups(groups, ("a", "b", "c"))


def test_crosses() -> None:
    groups = (("a", "b"), ("c",))
    assert crosses(groups, "a", "c") and crosses(groups, "c", "b")
    assert not crosses(groups, "a", "b") and not crosses(None, "a", "c")


# -- a whole network, in its own thread -----------------------------------------------------


def blocking_round_trip(address: str, payload: bytes = b"ping", timeout_s: float = 2.0) -> bool:
    """True if payload comes back through address within timeout_s."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = sock.recv(len(payload))
                if not chunk:
                    return False
                received += chunk
        except (TimeoutError, ConnectionError):
            return False
        return received == payload


class EchoThreads:
    """One blocking echo server per node id, in threads."""

    def __init__(self, nodes: list[str]) -> None:
        import socketserver
        import threading

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.servers = {node: Server(("127.0.0.1", 0), Handler) for node in nodes}
        for server in self.servers.values():
            threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()

    def targets(self) -> dict[str, tuple[str, int]]:
        return {node: server.server_address[:2] for node, server in self.servers.items()}  # type: ignore[misc]

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def network() -> AsyncIterator[LinkNetwork]:  # type: ignore[misc]
    echoes = EchoThreads(["a", "b", "c"])
    net = LinkNetwork(echoes.targets())
    net.start()
    try:
        yield net
    finally:
        net.close()
        echoes.close()


def reachable(net: LinkNetwork, source: str, target: str) -> bool:
    return blocking_round_trip(net.address(source, target), timeout_s=SILENCE_S)


def test_network_gives_each_directed_link_its_own_port(network: LinkNetwork) -> None:
    addresses = {network.address(s, t) for s in "abc" for t in "abc" if s != t}
    assert len(addresses) == 6
    assert all(address.startswith("127.0.0.1:") for address in addresses)
    assert network.peer_arguments("a") == [
        "--peer",
        f"b={network.address('a', 'b')}",
        "--peer",
        f"c={network.address('a', 'c')}",
    ]
    assert all(reachable(network, s, t) for s in "abc" for t in "abc" if s != t)


def test_network_partition_cuts_only_crossing_links(network: LinkNetwork) -> None:
    assert network.partition([["a"], ["b", "c"]]) == (("a",), ("b", "c"))
    assert network.group_of("a") == 1 and network.group_of("c") == 2
    assert not reachable(network, "a", "b") and not reachable(network, "b", "a")
    assert not reachable(network, "c", "a")
    assert reachable(network, "b", "c") and reachable(network, "c", "b")
    # A new partition mends the links it no longer cuts.
    network.partition([["a", "b"]])
    assert reachable(network, "a", "b") and not reachable(network, "a", "c")
    network.heal()
    assert network.groups is None and network.group_of("a") is None
    assert all(reachable(network, s, t) for s in "abc" for t in "abc" if s != t)


def test_network_isolate_and_unknown_nodes(network: LinkNetwork) -> None:
    network.isolate("b")
    assert not reachable(network, "a", "b") and reachable(network, "a", "c")
    with pytest.raises(LinkError, match="no node 'z'"):
        network.partition([["z"]])
    with pytest.raises(LinkError, match="no node 'z'"):
        network.slow("z", 10)


def test_network_slow_adds_latency_on_every_link_of_the_node(network: LinkNetwork) -> None:
    network.slow("a", 30)
    delays = {(s.source, s.target): s.delay_ms for s in network.states()}
    assert delays[("a", "b")] == delays[("b", "a")] == delays[("c", "a")] == 30
    assert delays[("b", "c")] == 0
    network.slow("b", 20)
    assert {(s.source, s.target): s.delay_ms for s in network.states()}[("a", "b")] == 50
    start = time.perf_counter()
    assert blocking_round_trip(network.address("b", "a"))
    assert time.perf_counter() - start >= 0.095  # 50 ms each way
    network.heal()  # heal removes latency too
    assert all(s.delay_ms == 0 for s in network.states())


def test_a_node_added_to_the_network_gets_links_both_ways(network: LinkNetwork) -> None:
    """Issue 14: a member added later is behind proxies like the others, so faults reach it;
    added during a partition it is a group of its own until heal."""
    extra = EchoThreads(["d"])
    try:
        network.partition([["a"], ["b", "c"]])
        network.add_node("d", extra.targets()["d"])
        assert network.nodes == ("a", "b", "c", "d")
        assert network.groups == (("a",), ("b", "c"), ("d",))
        assert not any(reachable(network, s, "d") or reachable(network, "d", s) for s in "abc")
        network.heal()
        assert all(reachable(network, s, "d") and reachable(network, "d", s) for s in "abc")
        network.isolate("d")
        assert not reachable(network, "a", "d") and reachable(network, "a", "b")
        network.heal()
        network.slow("d", 20)
        delays = {(s.source, s.target): s.delay_ms for s in network.states()}
        assert delays[("a", "d")] == delays[("d", "c")] == 20
        assert network.peer_arguments("d", ["a", "b", "c"])[1] == f"a={network.address('d', 'a')}"
        with pytest.raises(LinkError, match="already has its links"):
            network.add_node("d", extra.targets()["d"])
    finally:
        extra.close()


def test_network_close_is_idempotent_and_final() -> None:
    echoes = EchoThreads(["a", "b"])
    try:
        net = LinkNetwork(echoes.targets())
        net.start()
        address = net.address("a", "b")
        net.close()
        net.close()
        host, port = address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2).close()
        with pytest.raises(RuntimeError):
            net.partition([["a"]])
    finally:
        echoes.close()


def test_measure_cost_reports_both_paths() -> None:
    cost = measure_cost(rounds=100, bulk_bytes=2**20)
    assert 0 < cost.direct_p50_us <= cost.direct_p99_us
    assert 0 < cost.proxied_p50_us <= cost.proxied_p99_us
    assert cost.proxied_mb_s > 0 and cost.direct_mb_s > 0
    assert set(cost.as_dict()) >= {"added_p50_us", "proxied_mb_s"}
