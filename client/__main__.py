"""`python -m client`: the chat REPL, in a terminal or fed by a pipe.

    python -m client --cluster cluster.yaml        # every node of the cluster, with failover
    python -m client --servers host:port,host:port --ca ca.pem  # the same, from a list
    python -m client --server host:port --ca ca.pem             # pinned to one node

With --cluster the client trusts the CA cluster.yaml names (data_dir/tls/ca.pem by default);
with --servers or --server it needs --ca FILE, or --plaintext for a `tls: plaintext` cluster.

The mode is chosen here, before any prompt_toolkit object exists: interactive when stdin and
stdout are terminals, piped otherwise. The only module of the client that configures logging.

Imports client.*, node.config (the cluster.yaml loader) and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from client.api import (
    DEFAULT_CALL_TIMEOUT_S,
    DEFAULT_OVERALL_TIMEOUT_S,
    ChatClient,
    parse_address,
    parse_servers,
)
from client.errors import AddressError
from client.repl import run_piped, run_terminal
from node.config import ConfigError, load_config

DEFAULT_HISTORY_FILE = "~/.chatbooth_history"


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (patch_stdout replaces it), so that log
    lines appear above the prompt instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="The chatbooth chat client. With stdin not a terminal it reads commands "
        "line by line (a password on the line after login and delete-account, and on both "
        "lines after register, which asks twice) and exits non-zero if any command failed.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster", metavar="FILE", help="cluster.yaml (default: ./cluster.yaml if it exists)"
    )
    where.add_argument("--servers", metavar="HOST:PORT,...", help="the nodes, comma-separated")
    where.add_argument(
        "--server", metavar="HOST:PORT", help="talk to this node only, never fail over"
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--ca",
        metavar="FILE",
        help="the cluster's CA certificate (PEM), with --servers or --server",
    )
    trust.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS, with --servers or --server (a cluster with `tls: plaintext`)",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from FILE's first line instead of asking",
    )
    parser.add_argument(
        "--history-file",
        metavar="FILE",
        default=DEFAULT_HISTORY_FILE,
        help=f"command history of the interactive REPL (default {DEFAULT_HISTORY_FILE})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_OVERALL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long a command waits for the cluster (default {DEFAULT_OVERALL_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=DEFAULT_CALL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"deadline of one call to one node (default {DEFAULT_CALL_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log failovers (-vv: more)"
    )
    return parser


def _client(args: argparse.Namespace) -> ChatClient:
    """The ChatClient the arguments ask for; ConfigError or AddressError if they are wrong."""
    call_timeout_s: float = args.call_timeout
    overall_timeout_s: float = args.timeout
    ca: bytes | None = None
    if args.server or args.servers:
        if args.ca is None and not args.plaintext:
            raise AddressError(
                "--servers and --server need --ca FILE (the cluster's CA, data_dir/tls/ca.pem "
                "by default) or --plaintext for a cluster with `tls: plaintext`"
            )
        if args.ca is not None:
            ca = _read_ca(args.ca)
    elif args.ca is not None or args.plaintext:
        raise AddressError(
            "--ca and --plaintext go with --servers or --server; --cluster "
            "takes the CA from cluster.yaml"
        )
    if args.server:
        return ChatClient(
            [parse_address(args.server)],
            pinned=True,
            call_timeout_s=call_timeout_s,
            overall_timeout_s=overall_timeout_s,
            ca=ca,
        )
    servers = parse_servers(args.servers) if args.servers else None
    if servers is None:
        path = args.cluster
        if path is None:
            if not Path("cluster.yaml").exists():
                raise AddressError(
                    "no cluster given: use --cluster cluster.yaml, --servers HOST:PORT,... "
                    "or --server HOST:PORT"
                )
            path = "cluster.yaml"
    return ChatClient(
        load_config(path) if servers is None else servers,
        call_timeout_s=call_timeout_s,
        overall_timeout_s=overall_timeout_s,
        ca=ca,
    )


def _read_ca(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            pem = file.read()
    except OSError as error:
        raise AddressError(f"--ca {path}: {error.strerror or error}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise AddressError(f"--ca {path}: not a PEM certificate")
    return pem


def _read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            password = file.readline().rstrip("\r\n")
    except OSError as error:
        raise AddressError(f"--password-file {path}: {error.strerror or error}") from None
    if not password:
        raise AddressError(f"--password-file {path}: the first line is empty")
    return password


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        handlers=[handler],
    )
    if args.verbose < 2:
        logging.getLogger("grpc").setLevel(logging.WARNING)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    for name, value in (("--timeout", args.timeout), ("--call-timeout", args.call_timeout)):
        if not value > 0:
            print(f"chatbooth: {name} must be positive, got {value:g}", file=sys.stderr)
            return 2
    try:
        password = None if args.password_file is None else _read_password_file(args.password_file)
        client = _client(args)
    except (ConfigError, AddressError) as error:
        print(f"chatbooth: {error}", file=sys.stderr)
        return 2
    # Decided before any prompt_toolkit object exists (TRAPS.md, prompt_toolkit).
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive and sys.stdin.isatty() and password is None:
        print(
            "chatbooth: output is not a terminal, so commands are read as plain lines and a "
            "password typed here is visible; --password-file avoids that",
            file=sys.stderr,
        )
    try:
        if interactive:
            history = Path(args.history_file).expanduser()
            return asyncio.run(run_terminal(client, history, password))
        return asyncio.run(run_piped(client, password))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
