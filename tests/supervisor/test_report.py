"""The reports of `check --report` and `bench --report` (supervisor/report.py): one HTML file
that holds its charts and refers to nothing outside itself.

Fast: the page from synthetic operations, faults and role samples (the fault intervals in text,
one data: image per chart, no external reference), the recording helpers, and bad --report
directories refused before a run. A browser test loads a report in headless Chromium with the
network blocked. End to end, `check` and `bench --quick` write a report holding the run's own
fault intervals (real clusters; a longer check with membership changes is a slow test).
"""

from __future__ import annotations

import base64
import functools
import html
import itertools
import json
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from supervisor.bench import EXPECTED_KEYS
from supervisor.errors import SupervisorError
from supervisor.history import Outcome, Verdict
from supervisor.report import (
    REPORT_NAME,
    FaultInterval,
    FaultLog,
    Operation,
    ReportError,
    RoleSample,
    RoleSampler,
    describe_written,
    prepare_report_dir,
    render_html,
    role_spans,
    write_report,
)
from tests.chromium import chromium
from tests.conftest import write_cluster_yaml

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHARTS = 3  # latency, throughput, roles and terms


# -- reading a page --------------------------------------------------------------------------


class _Page(HTMLParser):
    """Every tag, every attribute that can name another resource, every image."""

    REFERRING = frozenset(
        {"src", "href", "srcset", "poster", "action", "formaction", "data", "background"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.references: list[str] = []
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = {name: value or "" for name, value in attrs}
        self.references += [v for name, v in values.items() if name in self.REFERRING]
        if tag == "img":
            self.images.append(values)


def read_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def external_references(text: str) -> list[str]:
    """Every src=, href= (and the like), url( and @import target that is neither a data: URI
    nor a #fragment of the page itself."""
    page = read_page(text)
    targets = list(page.references)
    targets += re.findall(r"url\(\s*['\"]?([^'\")\s]*)", text)
    targets += re.findall(r"@import\s+['\"]?([^'\";\s]*)", text)
    return [t for t in targets if not t.startswith(("data:", "#"))]


def png_size(uri: str) -> tuple[int, int]:
    """(width, height) of a data:image/png;base64 URI, from its IHDR chunk."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    data = base64.b64decode(uri[len(prefix) :], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@dataclass(frozen=True)
class Row:
    label: str
    start_s: float
    end: str  # seconds, or "(run end)"


def fault_rows(text: str) -> list[Row]:
    """The rows of the page's table of fault intervals."""
    section = text[text.index('<section id="faults">') :]
    section = section[: section.index("</section>")]
    cells = re.findall(
        r"<tr><td class='n'>\d+</td><td>(.*?)</td><td class='n'>([\d.]+)</td>"
        r"<td class='n'>(.*?)</td>",
        section,
    )
    return [Row(html.unescape(label), float(start), end) for label, start, end in cells]


def leader_rows(text: str) -> list[tuple[str, str]]:
    """(term, node) of each row of the page's table of leaders."""
    section = text[text.index('<section id="leaders">') :]
    section = section[: section.index("</section>")]
    return re.findall(r"<tr><td class='n'>([\d?]+)</td><td>(.*?)</td>", section)


# -- synthetic runs ------------------------------------------------------------------------


FAULTS = [
    FaultInterval("kill b", 2.0, 4.5),
    FaultInterval("partition a | b,c", 6.0, 8.25),
    FaultInterval("pause c", 9.0, None),  # never undone
]


def synthetic_run() -> tuple[list[Operation], list[RoleSample]]:
    operations = []
    for i in range(600):
        start = i * 0.02
        slow = 6.0 <= start < 8.25
        outcome = Outcome.OK
        if slow:
            outcome = (Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN)[i % 3]
        latency_s = 0.9 if slow else 0.004 + (i % 7) / 1000
        operations.append(Operation("send" if i % 5 else "read", start, start + latency_s, outcome))
    roles = []
    for k in range(48):
        t = k * 0.25
        for node in "abc":
            leader = "a" if t < 6.5 else "b"
            role: str | None = "leader" if node == leader else "follower"
            if node == "b" and 2.0 <= t < 4.5:
                role = None  # killed
            term = 1 if t < 6.5 else 2
            roles.append(RoleSample(t, node, role, term if role else None))
    return operations, roles


@functools.cache
def synthetic_page() -> str:
    operations, roles = synthetic_run()
    verdict = Verdict(
        ["acknowledged send 'user1#7' (user1 -> user2) was lost"],
        {"sends": 480, "acknowledged": 470, "violations": 1},
    )
    return render_html(
        "chatbooth check: FAIL, seed 7",
        {"seed": 7, "nemesis": "kill,pause,partition every 2 s", "duration": "12 s"},
        operations,
        FAULTS,
        roles,
        verdict=verdict,
        timeline=["   2.00s  kill b", "   4.50s  start b"],
    )


# -- the page ------------------------------------------------------------------------------


def test_the_page_names_every_fault_interval_in_text_and_draws_one_image_per_chart() -> None:
    started = time.perf_counter()
    text = synthetic_page()
    took_s = time.perf_counter() - started
    print(f"synthetic report: {len(text.encode()) / 1024:.0f} KB in {took_s:.2f} s")
    assert fault_rows(text) == [
        Row("kill b", 2.0, "4.50"),
        Row("partition a | b,c", 6.0, "8.25"),
        Row("pause c", 9.0, "(run end)"),
    ]
    page = read_page(text)
    assert len(page.images) == CHARTS
    for image in page.images:
        width, height = png_size(image["src"])
        assert width >= 1000 and height >= 200, (width, height)
        assert image["alt"]
    assert "script" not in page.tags and "link" not in page.tags
    assert "seed" in text and "kill,pause,partition every 2 s" in text  # the parameters
    assert 'Verdict: <span class="fail">FAIL</span>' in text
    assert "was lost" in text  # the first violations
    assert leader_rows(text) == [("1", "a"), ("2", "b")]
    assert len(text.encode()) < 2_000_000


def test_the_page_refers_to_nothing_outside_itself() -> None:
    text = synthetic_page()
    assert read_page(text).references, "no references read at all: the parser is broken"
    assert external_references(text) == []
    # The same check sees each kind of reference a page could make.
    planted = [
        '<img src="http://example.com/a.png">',
        '<link rel="stylesheet" href="https://example.com/s.css">',
        '<script src="app.js"></script>',
        '<div style="background: url(https://example.com/b.png)"></div>',
        "<style>@import 'other.css';</style>",
    ]
    for tag in planted:
        assert external_references(text.replace("</body>", tag + "</body>")), tag


def test_an_empty_run_still_makes_a_whole_page() -> None:
    text = render_html("chatbooth bench", {}, [], [], [], figures="sends/s 1,234")
    assert len(read_page(text).images) == CHARTS
    assert "No faults." in text and "sends/s 1,234" in text
    assert external_references(text) == []


def test_the_roles_merge_into_spans_of_one_role_and_term() -> None:
    samples = [
        RoleSample(0.0, "a", "follower", 1),
        RoleSample(0.5, "a", "leader", 1),
        RoleSample(1.0, "a", "leader", 1),
        RoleSample(1.5, "a", None, None),
        RoleSample(2.0, "a", "follower", 2),
        RoleSample(0.0, "b", "leader", 1),
    ]
    spans = role_spans(samples, end_s=2.1)
    assert [(s.role, s.term, s.start_s, s.end_s) for s in spans["a"]] == [
        ("follower", 1, 0.0, 0.25),  # each sample holds halfway to its neighbours
        ("leader", 1, 0.25, 1.25),
        (None, None, 1.25, 1.75),
        ("follower", 2, 1.75, 2.1),  # the last one half an interval, cut at the run's end
    ]
    assert [(s.role, s.start_s, s.end_s) for s in spans["b"]] == [("leader", 0.0, 0.25)]


def test_the_fault_log_closes_what_was_opened() -> None:
    now = [0.0]
    log = FaultLog(lambda: now[0])
    log.begin("b", "kill b")
    now[0] = 1.5
    log.begin("partition", "partition a | b,c")
    now[0] = 2.0
    log.end("b")
    log.end("c")  # nothing open under c: nothing happens
    now[0] = 3.0
    log.begin("a", "remove a")
    now[0] = 3.5
    log.end("a", " (failed)")
    assert log.intervals() == [
        FaultInterval("kill b", 0.0, 2.0),
        FaultInterval("partition a | b,c", 1.5, None),
        FaultInterval("remove a (failed)", 3.0, 3.5),
    ]


@dataclass(frozen=True)
class _Status:
    id: str
    role: str | None
    term: int | None


def _poll(until: Callable[[], object], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.005)


def test_the_role_sampler_asks_in_its_own_thread_until_stopped() -> None:
    rounds = 0
    threads: set[str] = set()

    def statuses() -> list[_Status]:
        nonlocal rounds
        rounds += 1
        threads.add(threading.current_thread().name)
        if rounds == 2:
            raise SupervisorError("the cluster is closed")  # a round skipped, not the sampler
        return [_Status("a", "leader", 3), _Status("b", None, None)]

    started = time.monotonic()
    sampler = RoleSampler(statuses, lambda: time.monotonic() - started, interval_s=0.02)
    with sampler:
        _poll(until=lambda: rounds >= 4, timeout_s=10)
    count = len(sampler.samples)
    assert threads == {"role-sampler"}
    assert count >= 2 * 3  # two nodes a round, the raising round left out
    assert {(s.node, s.role, s.term) for s in sampler.samples} == {
        ("a", "leader", 3),
        ("b", None, None),
    }
    times = sorted({s.t_s for s in sampler.samples})  # one time a round
    assert [s.t_s for s in sampler.samples] == sorted(s.t_s for s in sampler.samples)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.9 * sampler.interval_s
    time.sleep(0.05)
    assert len(sampler.samples) == count  # stopped means stopped


def test_a_report_is_written_whole_into_its_directory(tmp_path: Path) -> None:
    operations, roles = synthetic_run()
    directory = tmp_path / "a" / "b"
    assert prepare_report_dir(directory) == directory / REPORT_NAME
    assert directory.is_dir() and list(directory.iterdir()) == []  # the probe is gone
    path = write_report(directory, "t", {"seed": 1}, operations, FAULTS, roles, figures="x")
    assert path == directory / REPORT_NAME
    assert [p.name for p in directory.iterdir()] == [REPORT_NAME]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert describe_written(path) == f"report: {path} ({path.stat().st_size / 1024:,.0f} KB)"


def test_a_directory_that_cannot_hold_a_report_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ReportError, match="exists and is not a directory"):
        prepare_report_dir(file)
    with pytest.raises(ReportError, match="cannot write a report there"):
        prepare_report_dir(file / "below")


def _supervisor(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.parametrize("command", ["check", "bench"])
def test_a_bad_report_directory_is_a_usage_error_before_the_run(
    tmp_path: Path, command: str
) -> None:
    config = write_cluster_yaml(tmp_path, name="report-usage")
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    started = time.monotonic()
    result = _supervisor(command, str(config), "--report", str(taken), timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{command}: --report: {taken} exists and is not a directory" in result.stderr
    assert "Traceback" not in result.stderr and "cluster up" not in result.stdout
    assert not (tmp_path / "data").exists()  # no node was started
    assert time.monotonic() - started < 30


def test_bench_refuses_a_report_of_a_scale_run(tmp_path: Path) -> None:
    config = write_cluster_yaml(tmp_path, name="report-usage")
    result = _supervisor(
        "bench", str(config), "--scale", "10", "--report", str(tmp_path / "r"), timeout_s=60
    )
    assert result.returncode == 2 and "--report does not apply to --scale" in result.stderr


# -- in a browser ----------------------------------------------------------------------------


def test_the_report_loads_in_a_browser_with_the_network_blocked(tmp_path: Path) -> None:
    operations, roles = synthetic_run()
    path = write_report(tmp_path / "report", "t", {"seed": 1}, operations, FAULTS, roles)
    control = tmp_path / "control.html"  # what an external image would do here
    control.write_text('<!doctype html><img src="http://example.com/x.png">', encoding="utf-8")
    images = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
    resources = "return performance.getEntriesByType('resource').map(e => e.name)"
    with chromium(tmp_path, offline=True) as browser:
        browser.get(path.as_uri())
        loaded = browser.execute_script(images)
        fetched = browser.execute_script(resources)
        browser.save_screenshot(str(tmp_path / "report.png"))
        browser.get(control.as_uri())
        _poll(until=lambda: browser.execute_script(images)[0][0], timeout_s=20)
        control_loaded = browser.execute_script(images)
        control_fetched = browser.execute_script(resources)
    assert len(loaded) == CHARTS and all(done and width > 0 for done, width in loaded), loaded
    assert [url for url in fetched if url.startswith(("http:", "https:"))] == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
    # The control shows the blocked network and the resource list at work.
    assert control_loaded == [[True, 0]]
    assert any(url.startswith("http://example.com/") for url in control_fetched)


# -- end to end ------------------------------------------------------------------------------


TIMELINE_LINE = re.compile(r"^\s+(\d+\.\d\d)s  (.*)$")
UNDO = {"start": "kill", "resume": "pause"}


def timeline_faults(stdout: str) -> list[tuple[str, float, float]]:
    """(label, start, end) of each kill, pause and partition in the timeline check printed."""
    lines = stdout[stdout.index("\ntimeline:\n") :].splitlines()
    opened: dict[str, tuple[str, float]] = {}
    found = []
    for line in lines:
        match = TIMELINE_LINE.match(line)
        if match is None:
            continue
        t, event = float(match[1]), match[2]
        word, _, rest = event.partition(" ")
        if word in ("kill", "pause"):
            opened[rest] = (event, t)
        elif word == "partition":
            opened["partition"] = (event, t)
        elif word in UNDO and rest in opened:
            label, start = opened.pop(rest)
            found.append((label, start, t))
        elif event == "heal" and "partition" in opened:
            label, start = opened.pop("partition")
            found.append((label, start, t))
    return sorted(found, key=lambda f: f[1])


def _close(rows: list[Row], expected: list[tuple[str, float, float]]) -> None:
    assert [r.label for r in rows] == [label for label, _, _ in expected], rows
    for row, (label, start, end) in zip(rows, expected, strict=True):
        assert abs(row.start_s - start) <= 0.02, (label, row, start)
        assert abs(float(row.end) - end) <= 0.02, (label, row, end)


@pytest.mark.cluster
@pytest.mark.slow  # about 12 s: the default run keeps its margin under 10 minutes
def test_check_writes_a_report_of_its_own_faults(tmp_path: Path) -> None:
    """Seed 4 kills the leader (a) at the first step and cuts b off at the third."""
    config = write_cluster_yaml(tmp_path, name="check")
    directory = tmp_path / "reports" / "check"
    args = ["--duration", "4", "--clients", "2", "--interval", "1", "--seed", "4"]
    result = _supervisor("check", str(config), *args, "--report", str(directory), timeout_s=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = directory / REPORT_NAME
    assert f"report: {path} (" in result.stdout
    text = path.read_text(encoding="utf-8")
    print(f"check report: {len(text.encode()) / 1024:.0f} KB")
    expected = timeline_faults(result.stdout)
    assert [label for label, _, _ in expected] == ["kill a", "partition b | a,c"], expected
    _close(fault_rows(text), expected)
    assert 'Verdict: <span class="pass">PASS</span>' in text and "seed</th><td>4 (" in text
    first = re.search(r"cluster up, leader (\w+)", result.stdout)
    assert first is not None
    leaders = leader_rows(text)
    assert leaders and leaders[0][1] == first[1], leaders
    if first[1] == "a":  # the kill of the leader shows as a new leader in a later term
        assert len({term for term, _ in leaders}) >= 2, leaders
    page = read_page(text)
    assert len(page.images) == CHARTS and external_references(text) == []
    assert "<td>send</td>" in text and "<td>read</td>" in text  # the operations by kind


@pytest.mark.cluster
@pytest.mark.slow  # about 11 s
def test_bench_writes_a_report_and_keeps_its_json(tmp_path: Path) -> None:
    config = write_cluster_yaml(tmp_path, name="bench-test")
    directory = tmp_path / "bench-report"
    result = _supervisor(
        "bench", str(config), "--quick", "--json", "--report", str(directory), timeout_s=110
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)  # stdout is the document alone
    assert list(document)[: len(EXPECTED_KEYS)] == list(EXPECTED_KEYS)
    assert "report" not in document and document["failover_rounds"] == 3
    path = directory / REPORT_NAME
    assert f"report: {path} (" in result.stderr
    text = path.read_text(encoding="utf-8")
    print(f"bench report: {len(text.encode()) / 1024:.0f} KB")
    kills = fault_rows(text)
    assert len(kills) == 3 and all(
        re.fullmatch(r"kill [abc] \(leader\): .*", k.label) for k in kills
    )
    assert all(k.end != "(run end)" and float(k.end) > k.start_s for k in kills), kills
    assert "sends/s, 64 in flight" in text  # the figures table
    for phase in ("warm-up", "latency", "throughput", "failover"):
        assert f"<td>{phase}</td>" in text, phase
    leaders = leader_rows(text)  # a new leader in a later term after each kill
    assert len({term for term, _ in leaders}) >= 2 and len({n for _, n in leaders}) >= 2, leaders
    assert len(read_page(text).images) == CHARTS and external_references(text) == []


@pytest.mark.cluster
@pytest.mark.slow  # about 40 s
@pytest.mark.timeout(240)
def test_a_check_with_membership_changes_reports_them_as_faults(tmp_path: Path) -> None:
    """Seed 2 replaces a (the leader), removes c and adds it back (test_check_command.py)."""
    config = write_cluster_yaml(tmp_path, name="check")
    directory = tmp_path / "membership-report"
    args = ["--duration", "12", "--nemesis", "membership", "--clients", "4", "--interval", "3"]
    result = _supervisor(
        "check", str(config), *args, "--seed", "2", "--report", str(directory), timeout_s=220
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (directory / REPORT_NAME).read_text(encoding="utf-8")
    print(f"membership check report: {len(text.encode()) / 1024:.0f} KB")
    rows = fault_rows(text)
    labels = [r.label for r in rows]
    assert "replace a" in labels and "remove c" in labels, rows
    assert all(r.end != "(run end)" and float(r.end) > r.start_s for r in rows), rows
    assert external_references(text) == []
