"""Node processes: spawn, kill, stop, pause and resume them, reap them, and notice when one
exits on its own.

Each node runs as `python -m node --config ... --id X --exit-with-parent [--peer ...]` with
stdin from /dev/null (or it would steal the REPL's input) or from a pipe that carries its
configuration and is closed at once (`stdin_data`), its stdout and stderr appended to
data_dir/X/node.log, and a session of its own (a Ctrl-C in the supervisor's terminal is the
supervisor's to handle, not every node's). Orphans are impossible even if the supervisor is
SIGKILLed: the node sets PR_SET_PDEATHSIG at start-up, which fires when the *thread* that
forked it exits, so nodes are spawned from the main thread only (TRAPS, "Processes and
signals"), and never through `preexec_fn` (unsafe with gRPC threads about).

Signals go by PID through psutil, only to a child that is not yet reaped (so the PID cannot
have been reused); every child is reaped, so none lingers as a zombie.

Imports the standard library, psutil and supervisor.errors only: nothing from node, client
or protos.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil

from supervisor.errors import SupervisorError

logger = logging.getLogger(__name__)

LOG_NAME: Final = "node.log"
TAIL_LINES: Final = 12
MONITOR_INTERVAL_S: Final = 0.05
KILL_WAIT_S: Final = 10.0  # SIGKILL is not refused; this only bounds a wedged kernel
SUSPEND_WAIT_S: Final = 2.0

# The node's exit codes (node/__main__.py), for people.
EXIT_MEANINGS: Final[Mapping[int, str]] = {
    0: "stopped cleanly",
    1: "error",
    2: "bad usage or configuration",
    3: "storage error: corrupt, locked or failing data directory",
    4: "address in use",
    5: "not a member: its data directory is empty; replace it",
}


class ProcessError(SupervisorError):
    """A process operation that cannot be done: the node is not running, already running, or
    was asked for from the wrong thread."""


class ProcessState(enum.Enum):
    UP = "up"
    PAUSED = "paused"
    DOWN = "down"


def describe_exit(code: int) -> str:
    """An exit code for people: `3 (storage error: ...)`, `killed by SIGKILL`."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    meaning = EXIT_MEANINGS.get(code)
    return f"exit code {code}" + (f" ({meaning})" if meaning else "")


@dataclass(frozen=True, slots=True)
class NodeExit:
    """A node process ended."""

    node_id: str
    pid: int
    exit_code: int  # negative: killed by that signal
    expected: bool  # the supervisor ended it (kill, stop); False: it exited on its own
    log_path: Path
    log_tail: tuple[str, ...]  # its last log lines, from this run only

    def describe(self) -> str:
        how = "was stopped" if self.expected else "exited on its own"
        text = f"node {self.node_id} (pid {self.pid}) {how}: {describe_exit(self.exit_code)}"
        if not self.expected and self.log_tail:
            text += f"; last lines of {self.log_path}:\n" + "\n".join(
                f"    {line}" for line in self.log_tail
            )
        return text


def tail(
    path: Path, lines: int, *, start_offset: int = 0, max_bytes: int = 256 * 1024
) -> list[str]:
    """The last `lines` lines of the file at path, from start_offset on (no more than
    max_bytes are read). An absent file has no lines."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            begin = max(start_offset, size - max_bytes, 0)
            file.seek(begin)
            data = file.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    result = text.splitlines()
    if begin > start_offset and result:
        result = result[1:]  # the first line read may be a partial one
    return result[-lines:]


class NodeProcess:
    """One node's OS process, across its restarts. Thread-safe: the main thread spawns, any
    thread may signal, the monitor thread polls."""

    def __init__(
        self,
        node_id: str,
        argv: Sequence[str],
        *,
        node_dir: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin_data: bytes | None = None,
    ) -> None:
        self.node_id = node_id
        self.argv = list(argv)
        self.stdin_data = stdin_data  # written to each run's stdin, which is then closed
        self.node_dir = node_dir
        self.log_path = node_dir / LOG_NAME
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._lock = threading.RLock()
        self._popen: subprocess.Popen[bytes] | None = None  # None: not running (and reaped)
        self._psutil: psutil.Process | None = None
        self._ending = False  # the supervisor is ending this run: its exit is expected
        self._log_offset = 0  # where this run's lines begin in the log
        self.last_exit: NodeExit | None = None
        self.starts = 0

    # -- queries ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        """Spawned and not yet reaped (a zombie counts until the monitor reaps it)."""
        with self._lock:
            return self._popen is not None

    def state(self) -> ProcessState:
        with self._lock:
            if self._popen is None or self._psutil is None or self._popen.returncode is not None:
                return ProcessState.DOWN
            try:
                status = self._psutil.status()
            except psutil.NoSuchProcess:
                return ProcessState.DOWN
            if status == psutil.STATUS_ZOMBIE:
                return ProcessState.DOWN
            if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                return ProcessState.PAUSED
            return ProcessState.UP

    def log_tail(self, lines: int = TAIL_LINES, *, this_run: bool = False) -> list[str]:
        return tail(self.log_path, lines, start_offset=self._log_offset if this_run else 0)

    # -- actions ------------------------------------------------------------------------------

    def spawn(self) -> int:
        """Start the node; its PID. Main thread only (PR_SET_PDEATHSIG, see the module doc)."""
        if threading.current_thread() is not threading.main_thread():
            raise ProcessError(
                f"node {self.node_id} must be started from the main thread (PR_SET_PDEATHSIG "
                "fires when the thread that forked a node exits)"
            )
        with self._lock:
            if self._popen is not None:
                raise ProcessError(f"node {self.node_id} is already running (pid {self.pid})")
            try:
                popen = self._popen_with_log()
            except OSError as error:
                raise ProcessError(f"cannot start {self.node_id}: {error}") from None
            self._popen = popen
            self._ending = False
            self.starts += 1
            try:
                self._psutil = psutil.Process(popen.pid)
            except psutil.NoSuchProcess:
                self._psutil = None  # already gone: the monitor reaps it and reports the exit
            logger.info("started %s (pid %d)", self.node_id, popen.pid)
            return popen.pid

    def _popen_with_log(self) -> subprocess.Popen[bytes]:
        """Spawn with output appended to the log, after a header line (caller holds _lock)."""
        self.node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(
                f"--- {stamp} supervisor: starting {self.node_id}: "
                f"{shlex.join(self.argv)}\n".encode()
            )
            log.flush()
            self._log_offset = log.tell()
            popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL if self.stdin_data is None else subprocess.PIPE,
                stdout=log,
                stderr=log,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                close_fds=True,
            )
        if popen.stdin is not None:
            # The node reads all of it at start-up, or exits: a write cannot block for good.
            try:
                popen.stdin.write(self.stdin_data or b"")
            except BrokenPipeError:
                pass  # it exited already; the monitor reports how
            finally:
                with contextlib.suppress(BrokenPipeError):
                    popen.stdin.close()
        return popen

    def kill(self) -> NodeExit:
        """SIGKILL (a crash; a paused node too), then reap it."""
        with self._lock:
            popen = self._running_popen("kill")
            self._ending = True
            self._signal(signal.SIGKILL)
        return self._reap(popen, KILL_WAIT_S)

    def stop(self, grace_s: float) -> NodeExit:
        """SIGTERM and SIGCONT (a paused node must run to handle SIGTERM), up to grace_s for it
        to exit, then SIGKILL; reap it."""
        with self._lock:
            popen = self._running_popen("stop")
            self._ending = True
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)
        try:
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not exit %.1f s after SIGTERM: SIGKILL", self.node_id, grace_s)
            with self._lock:
                self._signal(signal.SIGKILL)
        return self._reap(popen, KILL_WAIT_S)

    def begin_stop(self) -> subprocess.Popen[bytes] | None:
        """The first half of stop() for stopping many nodes at once: SIGTERM and SIGCONT now;
        finish with end_stop(). None if it is not running."""
        with self._lock:
            if self._popen is None:
                return None
            self._ending = True
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)
            return self._popen

    def end_stop(self, popen: subprocess.Popen[bytes], deadline: float) -> NodeExit:
        """Wait for a begin_stop()ped node until the monotonic deadline, SIGKILL it if it is
        still there, reap it."""
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not exit after SIGTERM: SIGKILL", self.node_id)
            with self._lock:
                if self._popen is popen:
                    self._signal(signal.SIGKILL)
        return self._reap(popen, KILL_WAIT_S)

    def pause(self) -> None:
        """SIGSTOP (psutil suspend); returns once the process is stopped."""
        with self._lock:
            self._running_popen("pause")
            if self._psutil is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self._psutil.suspend()
        self._wait_state(ProcessState.PAUSED, "pause")

    def resume(self) -> None:
        """SIGCONT (psutil resume); returns once the process runs again."""
        with self._lock:
            self._running_popen("resume")
            if self._psutil is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self._psutil.resume()
        self._wait_state(ProcessState.UP, "resume")

    def poll(self) -> NodeExit | None:
        """Reap the process if it has exited; its exit if it did so on its own (the monitor's
        call). An exit the supervisor caused is reaped and reported by the one that caused it."""
        with self._lock:
            popen = self._popen
            if popen is None or self._ending:
                return None
            code = popen.poll()
            if code is None:
                return None
            return self._record_exit(popen, code, expected=False)

    # -- internals ----------------------------------------------------------------------------

    def _running_popen(self, action: str) -> subprocess.Popen[bytes]:
        if self._popen is None or self._popen.returncode is not None:
            exit_note = ""
            if self.last_exit is not None:
                exit_note = f"; it last exited: {describe_exit(self.last_exit.exit_code)}"
            raise ProcessError(f"cannot {action} {self.node_id}: it is not running{exit_note}")
        return self._popen

    def _signal(self, sig: signal.Signals) -> None:
        """Send sig by PID, to our unreaped child only (caller holds _lock)."""
        if self._psutil is None or self._popen is None or self._popen.returncode is not None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):  # exited in the meantime
            self._psutil.send_signal(sig)

    def _reap(self, popen: subprocess.Popen[bytes], timeout_s: float) -> NodeExit:
        try:
            code = popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ProcessError(
                f"{self.node_id} (pid {popen.pid}) did not die {timeout_s:.0f} s after SIGKILL"
            ) from None
        with self._lock:
            last = self.last_exit
            if self._popen is not popen and last is not None and last.pid == popen.pid:
                return last  # recorded already
            return self._record_exit(popen, code, expected=True)

    def _record_exit(
        self, popen: subprocess.Popen[bytes], code: int, *, expected: bool
    ) -> NodeExit:
        """Forget a reaped process (caller holds _lock)."""
        record = NodeExit(
            node_id=self.node_id,
            pid=popen.pid,
            exit_code=code,
            expected=expected,
            log_path=self.log_path,
            log_tail=tuple(tail(self.log_path, TAIL_LINES, start_offset=self._log_offset)),
        )
        self.last_exit = record
        if self._popen is popen:
            self._popen = None
            self._psutil = None
            self._ending = False
        logger.info("%s", record.describe().splitlines()[0])  # the owner announces it
        return record

    def _wait_state(self, want: ProcessState, action: str) -> None:
        deadline = time.monotonic() + SUSPEND_WAIT_S
        while True:
            state = self.state()
            if state is want:
                return
            if state is ProcessState.DOWN:
                raise ProcessError(f"cannot {action} {self.node_id}: it exited")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.node_id} is still {state.value} after {action}")
            time.sleep(0.005)


class ProcessTable:
    """Every node process of a cluster, and a monitor thread that reaps any that exits on its
    own and reports it to `on_exit` (called in the monitor thread)."""

    def __init__(
        self,
        processes: Mapping[str, NodeProcess],
        on_exit: Callable[[NodeExit], None] | None = None,
    ) -> None:
        self.processes = dict(processes)
        self._on_exit = on_exit
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def __getitem__(self, node_id: str) -> NodeProcess:
        return self.processes[node_id]

    def add(self, process: NodeProcess) -> None:
        """A node added to the cluster (not started); the monitor watches it from now on."""
        if process.node_id in self.processes:
            raise ProcessError(f"node {process.node_id} already has a process")
        self.processes = {**self.processes, process.node_id: process}

    def start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="node-monitor", daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.wait(MONITOR_INTERVAL_S):
            for process in list(self.processes.values()):
                try:
                    record = process.poll()
                except Exception:  # the monitor must outlive any one surprise
                    logger.exception("polling %s failed", process.node_id)
                    continue
                if record is not None and self._on_exit is not None:
                    try:
                        self._on_exit(record)
                    except Exception:
                        logger.exception("exit callback for %s failed", process.node_id)

    def stop_all(self, grace_s: float) -> list[NodeExit]:
        """Stop every running node at once: SIGTERM and SIGCONT to all, up to grace_s for them
        to exit, then SIGKILL to the rest; every one reaped."""
        deadline = time.monotonic() + grace_s
        begun = [(p, p.begin_stop()) for p in self.processes.values()]
        exits = []
        for process, popen in begun:
            if popen is not None:
                exits.append(process.end_stop(popen, deadline))
        return exits

    def close(self, grace_s: float) -> list[NodeExit]:
        """Stop every node and the monitor. Idempotent."""
        exits = self.stop_all(grace_s)
        self._stop.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)
        return exits
