"""Requests that do not even decode: refused with INVALID_ARGUMENT, logged at most once a
second, never with a traceback.

grpcio, left alone, answers a request whose bytes are not its protobuf message with UNKNOWN
("Unexpected <class 'DecodeError'>") and logs an ERROR with a traceback for each one: a client
with no account could fill the disk at 0.7 MB/s. This interceptor wraps every method's request
deserializer so that it cannot raise, and turns what it could not decode into a clean refusal.
Tracebacks are for the node's own bugs.

Imports grpc and the standard library only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

logger = logging.getLogger(__name__)


class RateLimitedLog:
    """At most one line per `interval_s`; the lines it held back are counted in the next."""

    def __init__(self, log: logging.Logger, interval_s: float = 1.0) -> None:
        self._log = log
        self._interval_s = interval_s
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        self._next = now + self._interval_s
        if self._held:
            message += f" (and {self._held} more like it since the last such line)"
            self._held = 0
        self._log.warning(message, *args)


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


BAD_REQUESTS = RateLimitedLog(logger)


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or anything a malformed message provokes
            return _Undecodable(exc)

    return deserialize


async def _refuse(method: str, context: Any, bad: _Undecodable) -> None:
    BAD_REQUESTS.warning(
        "refused an undecodable %s request from %s: %s",
        method,
        context.peer(),
        type(bad.error).__name__,
    )
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid {method.rsplit('/', 1)[-1]} message",
    )


class UndecodableRequestGuard(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method
        deserialize = _safe(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def uu(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):
                    await _refuse(method, context, request)
                return await unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(uu, deserialize, serialize)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            async def us(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await _refuse(method, context, request)
                replies = unary_stream(request, context)
                if hasattr(replies, "__aiter__"):
                    async for reply in replies:
                        yield reply
                else:  # a handler that writes with context.write() and returns
                    await replies  # type: ignore[misc]

            return grpc.unary_stream_rpc_method_handler(us, deserialize, serialize)
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def su(requests: AsyncIterator[Any], context: Any) -> Any:
                async def checked() -> AsyncIterator[Any]:
                    async for request in requests:
                        if isinstance(request, _Undecodable):
                            await _refuse(method, context, request)
                        yield request

                return await stream_unary(checked(), context)  # type: ignore[arg-type]

            return grpc.stream_unary_rpc_method_handler(su, deserialize, serialize)
        return handler  # stream-stream: none in chatbooth's services
