"""What one link proxy costs: `python -m benchmarks.links` prints one JSON object.

Round trips of small messages to a local echo server, directly and through one proxy of
supervisor/links.py (in its own thread, as the cluster runs it), and bulk throughput both ways:
what a partitionable network between the nodes adds to every message.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import statistics
import threading
import time
from dataclasses import dataclass

from supervisor.bench import percentile
from supervisor.links import LISTEN_HOST, READ_CHUNK, LinkNetwork


@dataclass(frozen=True, slots=True)
class ProxyCost:
    """Round trips of small messages to an echo server, directly and through one proxy (in its
    own thread, as the cluster runs it), and bulk throughput through the proxy."""

    rounds: int
    payload_bytes: int
    direct_p50_us: float
    direct_p99_us: float
    proxied_p50_us: float
    proxied_p99_us: float
    added_p50_us: float  # proxied minus direct, median
    direct_mb_s: float
    proxied_mb_s: float

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := sock.recv(READ_CHUNK):
            sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _round_trips(address: tuple[str, int], rounds: int, payload: bytes) -> list[float]:
    with socket.create_connection(address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()
            sock.sendall(payload)
            received = 0
            while received < len(payload):
                chunk = sock.recv(len(payload) - received)
                if not chunk:
                    raise ConnectionError("the echo server closed the connection")
                received += len(chunk)
            samples.append(time.perf_counter() - start)
        return samples


def _throughput_mb_s(address: tuple[str, int], total_bytes: int) -> float:
    block = b"x" * READ_CHUNK
    with socket.create_connection(address, timeout=30) as sock:
        received = 0

        def send() -> None:
            sent = 0
            while sent < total_bytes:
                sock.sendall(block)
                sent += len(block)

        start = time.perf_counter()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while received < total_bytes:
            chunk = sock.recv(READ_CHUNK)
            if not chunk:
                raise ConnectionError("the echo server closed the connection")
            received += len(chunk)
        elapsed = time.perf_counter() - start
        sender.join(timeout=10)
    return received / elapsed / 1e6


def _percentile_us(samples: list[float], fraction: float) -> float:
    return percentile(samples, fraction) * 1e6


def measure_cost(
    rounds: int = 2000, payload_bytes: int = 100, bulk_bytes: int = 32 * 2**20
) -> ProxyCost:
    """Measure what one proxy adds: round-trip latency of payload_bytes messages (p50, p99)
    and bulk throughput, against a local echo server, without and with the proxy."""
    payload = b"p" * payload_bytes
    with _EchoServer((LISTEN_HOST, 0), _EchoHandler) as echo:
        serving = threading.Thread(target=echo.serve_forever, name="echo", daemon=True)
        serving.start()
        try:
            echo_address: tuple[str, int] = echo.server_address[:2]  # type: ignore[assignment]
            with LinkNetwork({"client": ("0.0.0.0", 0), "echo": echo_address}) as network:
                host, port = network.address("client", "echo").rsplit(":", 1)
                proxied_address = (host, int(port))
                _round_trips(echo_address, rounds // 10 + 1, payload)  # warm up both paths
                _round_trips(proxied_address, rounds // 10 + 1, payload)
                direct = _round_trips(echo_address, rounds, payload)
                proxied = _round_trips(proxied_address, rounds, payload)
                direct_mb_s = _throughput_mb_s(echo_address, bulk_bytes)
                proxied_mb_s = _throughput_mb_s(proxied_address, bulk_bytes)
        finally:
            echo.shutdown()
    return ProxyCost(
        rounds=rounds,
        payload_bytes=payload_bytes,
        direct_p50_us=round(_percentile_us(direct, 0.5), 1),
        direct_p99_us=round(_percentile_us(direct, 0.99), 1),
        proxied_p50_us=round(_percentile_us(proxied, 0.5), 1),
        proxied_p99_us=round(_percentile_us(proxied, 0.99), 1),
        added_p50_us=round(statistics.median(proxied) * 1e6 - statistics.median(direct) * 1e6, 1),
        direct_mb_s=round(direct_mb_s, 1),
        proxied_mb_s=round(proxied_mb_s, 1),
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.links", description=__doc__)
    p.add_argument("--rounds", type=int, default=2000, help="round trips each way")
    p.add_argument("--payload-bytes", type=int, default=100)
    p.add_argument("--bulk-bytes", type=int, default=32 * 2**20, help="bytes for throughput")
    args = p.parse_args()
    cost = measure_cost(args.rounds, args.payload_bytes, args.bulk_bytes)
    print(json.dumps({"benchmark": "link-proxy", **cost.as_dict()}))


if __name__ == "__main__":
    main()
