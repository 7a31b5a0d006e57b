"""A bare gRPC server with the Chat service's Send answering at once: the yardstick the
cluster benchmark measures itself against on the same machine, in the same run, with the
nodes' server options and, given a directory with echo.pem and echo.key (a certificate of the
cluster's CA), the same TLS.

`python -m benchmarks.echo_server PORT [TLS_DIR]`
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from protos import chat_pb2
from protos.vocabulary import SERVER_OPTIONS

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]


class Echo:
    """Send and Status of the Chat service, answered at once; every other method is
    UNIMPLEMENTED (no servicer subclass: the echo serves those two only)."""

    def __init__(self) -> None:
        self._next = 0

    async def Send(self, request: chat_pb2.SendRequest, context: Context) -> chat_pb2.SendReply:
        self._next += 1
        return chat_pb2.SendReply(message_id=self._next, timestamp_ms=0)

    async def Status(
        self, request: chat_pb2.StatusRequest, context: Context
    ) -> chat_pb2.StatusReply:
        return chat_pb2.StatusReply(node_id="echo", role=chat_pb2.LEADER)

    def handler(self) -> grpc.GenericRpcHandler:
        service = chat_pb2.DESCRIPTOR.services_by_name["Chat"].full_name
        return grpc.method_handlers_generic_handler(
            service,
            {
                "Send": grpc.unary_unary_rpc_method_handler(
                    self.Send,
                    request_deserializer=chat_pb2.SendRequest.FromString,
                    response_serializer=chat_pb2.SendReply.SerializeToString,
                ),
                "Status": grpc.unary_unary_rpc_method_handler(
                    self.Status,
                    request_deserializer=chat_pb2.StatusRequest.FromString,
                    response_serializer=chat_pb2.StatusReply.SerializeToString,
                ),
            },
        )


async def serve(port: int, tls_dir: Path | None) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((Echo().handler(),))
    address = f"127.0.0.1:{port}"
    if tls_dir is None:
        bound = server.add_insecure_port(address)
    else:
        pair = ((tls_dir / "echo.key").read_bytes(), (tls_dir / "echo.pem").read_bytes())
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
    if bound == 0:
        raise SystemExit(f"echo server: port {port} in use")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
