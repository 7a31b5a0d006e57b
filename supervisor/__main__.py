"""`python -m supervisor up cluster.yaml [--fresh] [--no-repl] [--script FILE]`: run a whole
cluster on this machine and break it on purpose. `python -m supervisor cert ID --host H`
issues a certificate of the cluster's CA for a node on another machine, and `python -m
supervisor member ...` changes the membership of a cluster grown to other machines. (`check`
and `bench` run their own copy of the cluster, data in a temporary directory:
supervisor/check.py, supervisor/bench.py.)

- In a terminal: the fault REPL (supervisor/repl.py) with completion, history and a live
  toolbar.
- With stdin not a terminal (a pipe, /dev/null) or `--script FILE`: the same commands line by
  line, each echoed; the cluster is shut down when they end; exit status 1 if one failed.
- `--no-repl`: the cluster runs until Ctrl-C, SIGTERM or SIGHUP.
- Unless `--no-web`: a live web page of the cluster (supervisor/web), on 127.0.0.1 and the
  port of `--web PORT` (0, the default: any free one), its address printed with a one-time
  secret. Its buttons run the REPL's fault commands, on this (main) thread's loop.

The mode is chosen before any prompt_toolkit object exists. However the supervisor ends
(quit, Ctrl-D, Ctrl-C, SIGTERM, an error of its own) every node is stopped by PID and reaped;
if the supervisor is SIGKILLed, the nodes die with it (PR_SET_PDEATHSIG, set by the node).

Exit status: 0 done, 1 a command or the cluster failed, 2 bad usage or configuration.

This is the only supervisor module that configures logging handlers or installs signal
handlers. Imports the supervisor modules and node.config; never node internals or client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from node.config import NODE_ID_PATTERN, TOOL_NAME, ConfigError, certificate_name, load_config
from supervisor import bench as bench_command
from supervisor import check as check_command
from supervisor import member_command
from supervisor.certs import issue
from supervisor.cluster import Cluster, PortInUseError
from supervisor.errors import SupervisorError
from supervisor.processes import NodeExit
from supervisor.repl import PlainOutput, Repl, run_plain, run_terminal, terminal_mode
from supervisor.web.server import WebError, WebView

logger = logging.getLogger("supervisor")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Mode(enum.Enum):
    TERMINAL = "terminal"  # prompt_toolkit REPL
    PLAIN = "plain"  # commands line by line from stdin or --script
    NO_REPL = "no-repl"  # run until a signal


class Terminated(BaseException):
    """SIGTERM or SIGHUP asked the supervisor to stop (raised in the main thread)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor",
        description="Run a chatbooth cluster on this machine and break it on purpose.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="start every node of cluster.yaml and open the fault REPL",
        description="Start every node of the cluster (the configured leader first) and open "
        "the fault REPL; every node is stopped when it ends.",
    )
    up.add_argument("config", type=Path, help="the cluster's cluster.yaml")
    up.add_argument("--fresh", action="store_true", help="wipe the nodes' data first")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument("--no-repl", action="store_true", help="no REPL: run until Ctrl-C or SIGTERM")
    mode.add_argument(
        "--script", type=Path, metavar="FILE", help="run the commands in FILE, then stop"
    )
    web = up.add_mutually_exclusive_group()
    web.add_argument(
        "--web",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve the live web page on this port (default 0: any free one; printed)",
    )
    web.add_argument("--no-web", action="store_true", help="no web page")
    up.add_argument(
        "--web-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address the web page listens on (default 127.0.0.1: this machine only)",
    )
    up.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    up.set_defaults(run=_up)
    check = commands.add_parser(
        "check",
        help="random faults, then prove nothing acknowledged was lost, doubled or reordered",
        description=check_command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check_command.add_arguments(check)
    check.set_defaults(run=_check)
    bench = commands.add_parser(
        "bench",
        help="throughput, latency and failover time of the cluster, beside a bare gRPC server",
        description=bench_command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_command.add_arguments(bench)
    bench.set_defaults(run=_bench)
    cert = commands.add_parser(
        "cert",
        help="issue a certificate of the cluster's CA for a node (on another machine)",
        description="Issue a certificate for node ID signed by the cluster's CA (made by "
        "`supervisor up` under data_dir/tls, or the one cluster.yaml's tls.dir holds): DNS "
        "names ID.CLUSTER.chatbooth and each --host. Writes ID.pem and ID.key (mode 0600) and "
        "ca.pem to --out; copy them to the node's tls directory.",
    )
    cert.add_argument("id", help="the node's id (its member name)")
    cert.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="H",
        help="an address or DNS name clients reach the node at (repeat for several)",
    )
    cert.add_argument(
        "--config", type=Path, default=Path("cluster.yaml"), help="default ./cluster.yaml"
    )
    cert.add_argument(
        "--out", type=Path, metavar="DIR", help="default: the cluster's tls directory"
    )
    cert.set_defaults(run=_cert)
    member = commands.add_parser(
        "member",
        help="list the members, or add, promote or remove one (members on other machines)",
        description=member_command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    member_command.add_arguments(member)
    member.set_defaults(run=_member)
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0..65535; 0: any free one)")
    return port


def _member(args: argparse.Namespace, node_command: Sequence[str] | None) -> int:
    return member_command.run(args)


def _cert(args: argparse.Namespace, node_command: Sequence[str] | None) -> int:
    try:
        config = load_config(args.config)
        if not NODE_ID_PATTERN.fullmatch(args.id) or args.id.casefold() == TOOL_NAME:
            raise ConfigError(f"{args.id!r} is not a valid node id")
        files = config.tls
        if files is None:
            raise ConfigError(f"{config.path}: tls: plaintext: there is no CA to sign with")
        out = args.out if args.out is not None else files.directory
        path = issue(config, args.id, args.host, out)
    except (ConfigError, SupervisorError) as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    names = ", ".join([certificate_name(args.id, config.cluster), *args.host])
    print(f"{path} and {path.with_suffix('.key')} (for {names}), CA {path.parent / 'ca.pem'}")
    return EXIT_OK


def _bench(args: argparse.Namespace, node_command: Sequence[str] | None) -> int:
    return bench_command.run_command(args)


def _check(args: argparse.Namespace, node_command: Sequence[str] | None) -> int:
    try:
        return asyncio.run(check_command.run_check(args))
    except (ConfigError, PortInUseError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SupervisorError as exc:
        print(f"check: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None, *, node_command: Sequence[str] | None = None) -> int:
    """The command line; node_command replaces `python -m node` (tests run a fake node)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Sequence[str] | None], int] = args.run
    return run(args, node_command)


def choose_mode(args: argparse.Namespace) -> Mode:
    if args.no_repl:
        return Mode.NO_REPL
    if args.script is not None or not terminal_mode(sys.stdin, sys.stdout):
        return Mode.PLAIN
    return Mode.TERMINAL


class _CurrentStderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time, so that log lines go above the prompt
    while prompt_toolkit's patch_stdout is in force."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging(verbose: int, mode: Mode) -> Iterator[None]:
    """Log lines to stderr while the supervisor runs; the root logger is as it was after."""
    quiet = logging.WARNING if mode is not Mode.NO_REPL else logging.INFO
    root = logging.getLogger()
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s supervisor: %(message)s", "%H:%M:%S"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel({0: quiet, 1: logging.INFO}.get(verbose, logging.DEBUG))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    """While every node is being stopped, a second Ctrl-C or SIGTERM must not cut that short."""
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _up(args: argparse.Namespace, node_command: Sequence[str] | None) -> int:
    mode = choose_mode(args)  # before any prompt_toolkit object exists
    with _logging(args.verbose, mode):
        return _run_up(args, node_command, mode)


def _run_up(args: argparse.Namespace, node_command: Sequence[str] | None, mode: Mode) -> int:
    script: list[str] | None = None
    if args.script is not None:
        try:
            script = args.script.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            _say(f"error: --script {args.script}: cannot read it: {error}")
            return EXIT_USAGE
    try:
        cluster = Cluster(args.config, fresh=args.fresh, node_command=node_command)
    except ConfigError as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    for warning in cluster.config.warnings:
        _say(f"warning: {warning}")
    web: WebView | None = None
    if not args.no_web:
        try:
            web = WebView(cluster, host=args.web_host, port=args.web)  # bound now, served later
        except WebError as error:
            _say(f"error: {error}")
            return EXIT_USAGE

    previous = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGINT)}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_terminated)
    status = EXIT_OK
    try:
        if mode is Mode.NO_REPL:
            cluster.add_exit_listener(_log_exit)
        _say(f"starting {len(cluster.node_ids)} nodes of {cluster.config.path} ...")
        if web is not None:
            web.start()  # serving now, its address printed once the cluster is up
        cluster.start()
        pids = ", ".join(f"{n} pid {p}" for n, p in cluster.pids().items())
        leader = cluster.leader()
        _say(f"cluster {cluster.config.cluster} is up: {pids}; leader {leader or 'unknown'}")
        files = cluster.config.tls
        if files is not None and cluster.ca_expiry is not None:
            _say(
                f"TLS: cluster CA {files.ca}, valid until {cluster.ca_expiry:%Y-%m-%d}; "
                f"clients: python -m client --cluster {cluster.config.path}"
            )
        if web is not None:
            _say(f"web view: {web.new_url()}  (the secret works once; `web` prints a new one)")
        if mode is Mode.NO_REPL:
            _say("running until Ctrl-C or SIGTERM")
            if web is None:
                _wait_for_signal()
            else:
                asyncio.run(_front_end(cluster, mode, None, web))
        else:
            status = asyncio.run(_front_end(cluster, mode, script, web))
    except (ConfigError, PortInUseError) as error:
        _say(f"error: {error}")
        status = EXIT_USAGE
    except SupervisorError as error:
        _say(f"error: {error}")
        status = EXIT_FAILED
    except (KeyboardInterrupt, Terminated, asyncio.CancelledError) as stop:
        why = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else (str(stop) or "a signal")
        _say(f"stopping ({why})")
        # An interrupted script did not run to its end.
        status = EXIT_FAILED if mode is Mode.PLAIN else EXIT_OK
    finally:
        _ignore_stop_signals()
        try:
            if web is not None:
                web.close()
        finally:
            cluster.close()
        _say("every node is stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


async def _page_commands(cluster: Cluster, web: WebView | None) -> int:
    """--no-repl with the web page: no prompt, but the page's commands run here (the main
    thread, which spawns nodes) and are logged; until a signal cancels this."""
    repl = Repl(cluster, PlainOutput())
    repl.attach_web(web)
    try:
        await asyncio.Event().wait()
    finally:
        repl.attach_web(None)
        await repl.close()
    return EXIT_OK


def _wait_for_signal() -> None:
    """Block until Ctrl-C (KeyboardInterrupt) or SIGTERM/SIGHUP (Terminated)."""
    forever = threading.Event()
    while not forever.wait(3600):
        pass


def _log_exit(exit: NodeExit) -> None:
    logger.warning("%s", exit.describe())


async def _front_end(
    cluster: Cluster, mode: Mode, script: list[str] | None, web: WebView | None
) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("the front end must run as a task")
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel, sig.name)
    try:
        if mode is Mode.TERMINAL:
            return await run_terminal(cluster, web=web)
        if mode is Mode.NO_REPL:
            return await _page_commands(cluster, web)
        return await run_plain(cluster, script, web=web)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        _ignore_stop_signals()
        if web is not None:
            web.close()  # first: the page's last round must not meet a closed cluster
        # Closing here, on the loop, ends the waits of commands still running in worker
        # threads, which asyncio.run would otherwise wait for.
        cluster.close()


if __name__ == "__main__":
    os.umask(0o077)  # keys, data dirs and logs are the cluster owner's only (issue 11)
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(EXIT_FAILED)
