"""The typed gRPC face of the Chat service, and the channel options every client channel uses.

The generated `chat_pb2_grpc.ChatStub` carries no type hints, so `mypy --strict` cannot check
calls through it; `ChatStub` here builds the same multi-callables with their request and reply
types, taking the method paths from the service descriptor so they cannot drift from
protos/chat.proto.

Imports grpc and protos only; nothing else from chatbooth. The metadata keys, reasons and
channel options are protos.vocabulary's.
"""

from __future__ import annotations

from typing import Final

import grpc
import grpc.aio

from protos import chat_pb2
from protos.vocabulary import CLIENT_CHANNEL_OPTIONS

SERVICE: Final = chat_pb2.DESCRIPTOR.services_by_name["Chat"]

_Unary = grpc.aio.UnaryUnaryMultiCallable
_Stream = grpc.aio.UnaryStreamMultiCallable


def _path(name: str) -> str:
    return f"/{SERVICE.full_name}/{SERVICE.methods_by_name[name].name}"


class ChatStub:
    """Typed multi-callables for every method of the Chat service, on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.RegisterClient: _Unary[
            chat_pb2.RegisterClientRequest, chat_pb2.RegisterClientReply
        ] = channel.unary_unary(
            _path("RegisterClient"),
            request_serializer=chat_pb2.RegisterClientRequest.SerializeToString,
            response_deserializer=chat_pb2.RegisterClientReply.FromString,
        )
        self.Register: _Unary[chat_pb2.RegisterRequest, chat_pb2.RegisterReply] = (
            channel.unary_unary(
                _path("Register"),
                request_serializer=chat_pb2.RegisterRequest.SerializeToString,
                response_deserializer=chat_pb2.RegisterReply.FromString,
            )
        )
        self.Login: _Unary[chat_pb2.LoginRequest, chat_pb2.LoginReply] = channel.unary_unary(
            _path("Login"),
            request_serializer=chat_pb2.LoginRequest.SerializeToString,
            response_deserializer=chat_pb2.LoginReply.FromString,
        )
        self.Logout: _Unary[chat_pb2.LogoutRequest, chat_pb2.LogoutReply] = channel.unary_unary(
            _path("Logout"),
            request_serializer=chat_pb2.LogoutRequest.SerializeToString,
            response_deserializer=chat_pb2.LogoutReply.FromString,
        )
        self.ListAccounts: _Unary[chat_pb2.ListAccountsRequest, chat_pb2.ListAccountsReply] = (
            channel.unary_unary(
                _path("ListAccounts"),
                request_serializer=chat_pb2.ListAccountsRequest.SerializeToString,
                response_deserializer=chat_pb2.ListAccountsReply.FromString,
            )
        )
        self.Send: _Unary[chat_pb2.SendRequest, chat_pb2.SendReply] = channel.unary_unary(
            _path("Send"),
            request_serializer=chat_pb2.SendRequest.SerializeToString,
            response_deserializer=chat_pb2.SendReply.FromString,
        )
        self.Subscribe: _Stream[chat_pb2.SubscribeRequest, chat_pb2.ChatMessage] = (
            channel.unary_stream(
                _path("Subscribe"),
                request_serializer=chat_pb2.SubscribeRequest.SerializeToString,
                response_deserializer=chat_pb2.ChatMessage.FromString,
            )
        )
        self.Ack: _Unary[chat_pb2.AckRequest, chat_pb2.AckReply] = channel.unary_unary(
            _path("Ack"),
            request_serializer=chat_pb2.AckRequest.SerializeToString,
            response_deserializer=chat_pb2.AckReply.FromString,
        )
        self.History: _Unary[chat_pb2.HistoryRequest, chat_pb2.HistoryReply] = channel.unary_unary(
            _path("History"),
            request_serializer=chat_pb2.HistoryRequest.SerializeToString,
            response_deserializer=chat_pb2.HistoryReply.FromString,
        )
        self.DeleteAccount: _Unary[chat_pb2.DeleteAccountRequest, chat_pb2.DeleteAccountReply] = (
            channel.unary_unary(
                _path("DeleteAccount"),
                request_serializer=chat_pb2.DeleteAccountRequest.SerializeToString,
                response_deserializer=chat_pb2.DeleteAccountReply.FromString,
            )
        )
        self.Status: _Unary[chat_pb2.StatusRequest, chat_pb2.StatusReply] = channel.unary_unary(
            _path("Status"),
            request_serializer=chat_pb2.StatusRequest.SerializeToString,
            response_deserializer=chat_pb2.StatusReply.FromString,
        )


def open_channel(address: str, ca: bytes | None = None) -> grpc.aio.Channel:
    """A channel to one node's client port, with CLIENT_CHANNEL_OPTIONS: TLS checked against the CA
    `ca` (PEM), or plaintext when it is None (`tls: plaintext`, fakes). Call from the event
    loop that will use it."""
    if ca is None:
        return grpc.aio.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.aio.secure_channel(address, credentials, options=CLIENT_CHANNEL_OPTIONS)
