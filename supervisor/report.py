"""One self-contained HTML report of a `check` or `bench` run, and what a run records for it.

A run hands over what it recorded: every operation (its kind, its start and end in seconds since
the run started, its outcome ok, failed or unknown, the node that answered it), every fault's
interval (`FaultLog` opens one at the fault and closes it at the undoing), and samples of every
node's role and term (`RoleSampler`: a thread of its own, so the run's event loop never waits
for a Status round). `render_html` turns that, the run's parameters and the checker's verdict
(check) or the figures table (bench) into one page:

- the latency of every operation over time, ok, failed and unknown in their own colours, each
  fault's interval shaded and named above the chart (Jepsen's latency graph);
- throughput over time: operations completed per second;
- every node's role and term over time;
- the same in text: the fault intervals, the leaders and their terms, the counts per kind.

The charts are drawn by matplotlib on its Agg canvas (`matplotlib.figure.Figure` with
FigureCanvasAgg: no pyplot, no global state, no display) and embedded as `data:image/png`
URIs; the style sheet is inline and the page has no script, so it opens from disk with the
network off. matplotlib is imported when a chart is drawn, not when a tool imports this module.

Imports the standard library, matplotlib and supervisor.errors and supervisor.history
(Outcome, Verdict); never grpc, asyncio, node, client or the cluster: the tools record, this
draws (a sampler is handed the function that asks for the statuses).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import os
import statistics
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from supervisor.errors import SupervisorError
from supervisor.history import Outcome, Verdict

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REPORT_NAME: Final = "report.html"
SAMPLE_INTERVAL_S: Final = 0.25  # how often a RoleSampler asks every node for its Status
DPI: Final = 100
WIDTH_IN: Final = 12.0
# Fixed margins (fractions of the width), so that the charts' time axes line up on the page;
# the legends sit in the right margin.
LEFT, RIGHT = 0.07, 0.83
MAX_TABLE_ROWS: Final = 200
X_MARGIN: Final = 1.01  # the time axis runs a little past the run's end
MAX_LANE_ROWS: Final = 6
LANE_FONT_PT: Final = 8

OUTCOME_COLOURS: Final = {
    Outcome.OK: "#2c7fb8",
    Outcome.FAILED: "#e31a1c",
    Outcome.UNKNOWN: "#ff9f1c",
}
MARKERS: Final = ("o", "^", "s", "D", "v", "P", "X")
ROLE_COLOURS: Final = {
    "leader": "#1a9850",
    "follower": "#91bfdb",
    "pre-candidate": "#fee090",
    "candidate": "#fc8d59",
    "unknown": "#bbbbbb",
    None: "#eeeeee",  # no answer: down, paused, or too slow
}
FAULT_COLOURS: Final = {  # by the label's first word
    "kill": "#a6761d",
    "pause": "#7570b3",
    "partition": "#66a61e",
    "remove": "#e7298a",
    "replace": "#e7298a",
    "add": "#e7298a",
    "slow": "#1b9e77",
}
OTHER_FAULT_COLOUR: Final = "#888888"


class ReportError(SupervisorError):
    """The report cannot be written where it was asked for."""


# -- what a run records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One call a client made, and how it ended."""

    kind: str  # check: "send", "read"; bench: the phase ("latency", "throughput", ...)
    start_s: float  # seconds since the run started (monotonic)
    end_s: float
    outcome: Outcome
    node: str = ""  # the node that answered it (or was asked last); "" not recorded

    @property
    def latency_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000


@dataclass(frozen=True, slots=True)
class FaultInterval:
    label: str  # "kill b", "partition a | b,c"
    start_s: float
    end_s: float | None  # None: still in force when the run ended

    @property
    def kind(self) -> str:
        return self.label.split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class RoleSample:
    t_s: float
    node: str
    role: str | None  # leader, follower, pre-candidate, candidate; None: no answer
    term: int | None


class FaultLog:
    """Fault intervals as a run makes and undoes its faults: `begin(key, label)` when a fault is
    made, `end(key)` when it is undone (key: a node id, or "partition")."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._open: dict[str, tuple[str, float]] = {}  # key -> (label, start)
        self._closed: list[FaultInterval] = []

    def begin(self, key: str, label: str) -> None:
        self.end(key)  # a fault made again over one never undone closes that one
        self._open[key] = (label, self._clock())

    def end(self, key: str, note: str = "") -> None:
        """Close the fault under key, if one is open; note is added to its label."""
        opened = self._open.pop(key, None)
        if opened is not None:
            label, start = opened
            self._closed.append(FaultInterval(label + note, start, self._clock()))

    def intervals(self) -> list[FaultInterval]:
        """Every interval by start, those still open with end None."""
        still = [FaultInterval(label, start, None) for label, start in self._open.values()]
        return sorted([*self._closed, *still], key=lambda f: f.start_s)


class StatusLike(Protocol):
    """What a sampler reads of a node's status (supervisor.cluster.NodeStatus has it)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str | None: ...
    @property
    def term(self) -> int | None: ...


class RoleSampler:
    """Every node's role and term every interval_s, asked by `statuses` (one round of Status,
    each call with its deadline) in a thread of its own until `stop()`. A round that raises a
    SupervisorError (the cluster closing) is skipped.

        with RoleSampler(lambda: cluster.status(timeout_s=0.3), run.now) as sampler:
            ...
        sampler.samples
    """

    def __init__(
        self,
        statuses: Callable[[], Iterable[StatusLike]],
        clock: Callable[[], float],
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.samples: list[RoleSample] = []  # appended by the thread; read after stop()
        self._statuses = statuses
        self._clock = clock
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="role-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[RoleSample]:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.samples

    def __enter__(self) -> RoleSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            asked = self._clock()
            try:
                statuses = list(self._statuses())
            except SupervisorError:
                statuses = []
            # A round takes up to its deadline: stamp its middle.
            t_s = (asked + self._clock()) / 2
            self.samples += [RoleSample(t_s, s.id, s.role, s.term) for s in statuses]
            self._stopping.wait(max(self.interval_s - (self._clock() - asked), 0.01))


# -- the report --------------------------------------------------------------------------------


def prepare_report_dir(directory: Path) -> Path:
    """Make directory (and its parents) and prove a file can be written there, before a run
    begins; the path the report will have. ReportError saying what is wrong."""
    if directory.exists() and not directory.is_dir():
        raise ReportError(f"{directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".report-probe-"):
            pass
    except OSError as error:
        raise ReportError(f"{directory}: cannot write a report there: {error}") from None
    return directory / REPORT_NAME


def write_report(
    directory: Path,
    title: str,
    params: Mapping[str, object],
    operations: Sequence[Operation],
    faults: Sequence[FaultInterval],
    roles: Sequence[RoleSample],
    *,
    verdict: Verdict | None = None,
    figures: str | None = None,
    timeline: Sequence[str] = (),
) -> Path:
    """Write directory/report.html (render_html's page; whole or not at all; 0600, like all
    the supervisor writes) and return its path. ReportError if it cannot be written."""
    text = render_html(
        title,
        params,
        operations,
        faults,
        roles,
        verdict=verdict,
        figures=figures,
        timeline=timeline,
    )
    path = directory / REPORT_NAME
    written: Path | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=directory, prefix=".report-", delete=False
        ) as file:
            written = Path(file.name)
            file.write(text)
        os.replace(written, path)
    except OSError as error:
        if written is not None:
            written.unlink(missing_ok=True)
        raise ReportError(f"{path}: cannot write the report: {error}") from None
    return path


def describe_written(path: Path) -> str:
    """`report: PATH (123 KB)`, for the end of a run."""
    return f"report: {path} ({path.stat().st_size / 1024:,.0f} KB)"


def render_html(
    title: str,
    params: Mapping[str, object],
    operations: Sequence[Operation],
    faults: Sequence[FaultInterval],
    roles: Sequence[RoleSample],
    *,
    verdict: Verdict | None = None,
    figures: str | None = None,
    timeline: Sequence[str] = (),
) -> str:
    """The report as one HTML page that refers to nothing outside itself: the parameters, the
    verdict (or the figures), the three charts and their tables."""
    end_s = _run_end(operations, faults, roles)
    spans = role_spans(roles, end_s)
    parts = [
        f"<h1>{_e(title)}</h1>",
        _params_table(params),
        '<nav><a href="#latency">latency</a> · <a href="#throughput">throughput</a> · '
        '<a href="#roles">roles and terms</a> · <a href="#faults">fault intervals</a> · '
        '<a href="#leaders">leaders</a></nav>',
    ]
    if verdict is not None:
        parts.append(_verdict_section(verdict))
    if figures is not None:
        parts.append(f"<section><h2>Figures</h2><pre>{_e(figures)}</pre></section>")
    parts += [
        _chart_section(
            "latency",
            "Latency of every operation",
            _png(_latency_figure(operations, faults, end_s)),
            "Each point is one operation, at the time it began and as long as it took (log "
            "scale); colour is its outcome, shape its kind. Shaded: the faults, named above (by "
            "their number in the table of fault intervals where the names do not fit).",
        ),
        _operations_table(operations),
        _chart_section(
            "throughput",
            "Throughput",
            _png(_throughput_figure(operations, faults, end_s)),
            "Operations completed per second, by outcome, the faults shaded.",
        ),
        _chart_section(
            "roles",
            "Roles and terms",
            _png(_roles_figure(spans, faults, end_s)),
            f"Each node's role as its Status said (asked about every "
            f"{_sample_interval(roles):.2g} s; grey: no answer), the term of each leader "
            "written on it; below, every node's term (lines a little apart where they agree).",
        ),
        _faults_table(faults, end_s),
        _leaders_table(spans),
    ]
    if timeline:
        parts.append(
            "<section><h2>Timeline</h2><details><summary>as the run printed it "
            f"({len(timeline)} lines)</summary><pre>{_e(chr(10).join(timeline))}</pre>"
            "</details></section>"
        )
    body = "\n".join(parts)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


STYLE: Final = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1240px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .3em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f8f8f8; padding: .6em; overflow-x: auto; }
.pass { color: #1a7f37; } .fail { color: #c62828; }
nav { margin: .6em 0; color: #555; }
.caption { color: #555; margin: .2em 0 .6em; }
"""


# -- the text ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _params_table(params: Mapping[str, object]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in params.items())
    return f'<table class="params">{rows}</table>'


def _verdict_section(verdict: Verdict) -> str:
    head = "PASS" if verdict.ok else "FAIL"
    counts = "".join(
        f"<tr><th>{_e(k)}</th><td class='n'>{v:,}</td></tr>" for k, v in verdict.counts.items()
    )
    total = verdict.counts.get("violations", len(verdict.violations))
    items = "".join(f"<li>{_e(v)}</li>" for v in verdict.violations)
    shown = len(verdict.violations)
    violations = (
        f"<p>The first {shown} of {total:,} violations:</p><ol>{items}</ol>"
        if verdict.violations
        else "<p>No violations.</p>"
    )
    return (
        f'<section id="verdict"><h2>Verdict: <span class="{head.lower()}">{head}</span></h2>'
        f"<table>{counts}</table>{violations}</section>"
    )


def _chart_section(anchor: str, heading: str, png: str, caption: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{_e(heading)}</h2>'
        f'<img src="data:image/png;base64,{png}" alt="{_e(heading)}">'
        f'<p class="caption">{_e(caption)}</p></section>'
    )


def _operations_table(operations: Sequence[Operation]) -> str:
    by_kind: dict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        by_kind[op.kind].append(op)
    rows = []
    for kind, ops in by_kind.items():
        outcomes = Counter(op.outcome for op in ops)
        ok = sorted(op.latency_ms for op in ops if op.outcome is Outcome.OK)
        figures = (
            [_ms(statistics.median(ok)), _ms(_rank(ok, 0.99)), _ms(ok[-1])] if ok else ["-"] * 3
        )
        cells = [len(ops), *(outcomes[o] for o in Outcome)]
        rows.append(
            f"<tr><td>{_e(kind)}</td>"
            + "".join(f"<td class='n'>{c:,}</td>" for c in cells)
            + "".join(f"<td class='n'>{f}</td>" for f in figures)
            + "</tr>"
        )
    head = (
        "<tr><th>kind</th><th>operations</th><th>ok</th><th>failed</th><th>unknown</th>"
        "<th>ok p50</th><th>ok p99</th><th>ok max</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _faults_table(faults: Sequence[FaultInterval], end_s: float) -> str:
    rows = []
    for i, f in enumerate(faults[:MAX_TABLE_ROWS], 1):
        end = f"{f.end_s:.2f}" if f.end_s is not None else "(run end)"
        duration = (f.end_s if f.end_s is not None else end_s) - f.start_s
        rows.append(
            f"<tr><td class='n'>{i}</td><td>{_e(f.label)}</td><td class='n'>{f.start_s:.2f}</td>"
            f"<td class='n'>{end}</td><td class='n'>{duration:.2f}</td></tr>"
        )
    more = _more(len(faults))
    body = (
        "<table><tr><th>#</th><th>fault</th><th>from (s)</th><th>until (s)</th>"
        f"<th>lasted (s)</th></tr>{''.join(rows)}</table>{more}"
        if faults
        else "<p>No faults.</p>"
    )
    return f'<section id="faults"><h2>Fault intervals</h2>{body}</section>'


def _leaders_table(spans: Mapping[str, Sequence[RoleSpan]]) -> str:
    leaders = sorted(
        (s for node_spans in spans.values() for s in node_spans if s.role == "leader"),
        key=lambda s: s.start_s,
    )
    rows = [
        f"<tr><td class='n'>{s.term if s.term is not None else '?'}</td><td>{_e(s.node)}</td>"
        f"<td class='n'>{s.start_s:.2f}</td><td class='n'>{s.end_s:.2f}</td></tr>"
        for s in leaders[:MAX_TABLE_ROWS]
    ]
    body = (
        "<table><tr><th>term</th><th>leader</th><th>from (s)</th><th>until (s)</th></tr>"
        f"{''.join(rows)}</table>{_more(len(leaders))}"
        if leaders
        else "<p>No node was seen leading.</p>"
    )
    return (
        f'<section id="leaders"><h2>Leaders</h2><p class="caption">Each node seen leading, as '
        f"the role samples show it.</p>{body}</section>"
    )


def _more(count: int) -> str:
    return f"<p>({count - MAX_TABLE_ROWS:,} more not shown)</p>" if count > MAX_TABLE_ROWS else ""


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _rank(ordered: Sequence[float], q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# -- the data behind the charts ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleSpan:
    """A node's role and term, unchanged from one sample to the next sample that differs."""

    node: str
    role: str | None
    term: int | None
    start_s: float
    end_s: float


def role_spans(roles: Sequence[RoleSample], end_s: float) -> dict[str, list[RoleSpan]]:
    """Per node (in order of appearance), its samples merged into spans of one role and term.
    A sample stands for the time halfway to its neighbours (the first from its own time, the
    last for half a sampling interval, or to end_s)."""
    by_node: dict[str, list[RoleSample]] = defaultdict(list)
    for sample in roles:
        by_node[sample.node].append(sample)
    half = _sample_interval(roles) / 2
    spans: dict[str, list[RoleSpan]] = {}
    for node, samples in by_node.items():
        samples.sort(key=lambda s: s.t_s)
        merged: list[RoleSpan] = []
        for i, s in enumerate(samples):
            since = (samples[i - 1].t_s + s.t_s) / 2 if i > 0 else s.t_s
            until = (s.t_s + samples[i + 1].t_s) / 2 if i + 1 < len(samples) else s.t_s + half
            until = max(min(until, end_s), since)
            last = merged[-1] if merged else None
            if last is not None and (last.role, last.term) == (s.role, s.term):
                merged[-1] = RoleSpan(node, s.role, s.term, last.start_s, until)
            else:
                merged.append(RoleSpan(node, s.role, s.term, since, until))
        spans[node] = merged
    return spans


def _sample_interval(roles: Sequence[RoleSample]) -> float:
    """The median time between one node's samples (SAMPLE_INTERVAL_S if it cannot be told)."""
    times = sorted({s.t_s for s in roles})
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return statistics.median(gaps) if gaps else SAMPLE_INTERVAL_S


def _run_end(
    operations: Sequence[Operation], faults: Sequence[FaultInterval], roles: Sequence[RoleSample]
) -> float:
    ends = [op.end_s for op in operations] + [s.t_s for s in roles]
    ends += [f.end_s if f.end_s is not None else f.start_s for f in faults]
    return max(ends, default=1.0) or 1.0


def _bin_width(end_s: float) -> float:
    """Wide enough to count several operations, narrow enough to show a failover."""
    for width in (0.25, 0.5, 1.0, 2.0, 5.0):
        if end_s / width <= 240:
            return width
    return 10.0


# -- the charts --------------------------------------------------------------------------------


def _png(figure: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # attaches itself: the figure is drawn by Agg, never on a display
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(heights_in: Sequence[float]) -> tuple[Figure, list[Axes]]:
    """A figure of stacked axes sharing the time axis, heights in inches, fixed margins."""
    from matplotlib.figure import Figure

    top_in, bottom_in, gap_in = 0.25, 0.6, 0.12
    total = sum(heights_in) + top_in + bottom_in + gap_in * (len(heights_in) - 1)
    figure = Figure(figsize=(WIDTH_IN, total), dpi=DPI)
    axes = figure.subplots(
        len(heights_in),
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": list(heights_in), "hspace": gap_in / max(heights_in)},
    )[:, 0]
    figure.subplots_adjust(left=LEFT, right=RIGHT, top=1 - top_in / total, bottom=bottom_in / total)
    return figure, list(axes)


@dataclass(frozen=True, slots=True)
class _Placed:
    row: int
    x: float
    text: str


def _lane_layout(faults: Sequence[FaultInterval], end_s: float) -> list[_Placed]:
    """Where each fault's label goes above the charts: at the fault's start (moved left where
    it would run past the chart's end), in the first row free by then, so that no two labels
    overlap (their widths estimated from their length). Where the labels do not fit in
    MAX_LANE_ROWS rows, each fault is named shorter: its number in the table of fault intervals
    and the label's first two words ("3 kill b"), else its number alone."""
    numbered = [f"{i} {' '.join(f.label.split()[:2])}" for i, f in enumerate(faults, 1)]
    for texts in ([f.label for f in faults], numbered):
        placed = _place(faults, texts, end_s)
        if placed is not None:
            return placed
    return _place(faults, [str(i) for i in range(1, len(faults) + 1)], end_s, share=True) or []


def _place(
    faults: Sequence[FaultInterval], texts: Sequence[str], end_s: float, share: bool = False
) -> list[_Placed] | None:
    """_lane_layout with these texts; None if they need more than MAX_LANE_ROWS rows, unless
    `share` (then a row that frees up first is shared)."""
    x_max = end_s * X_MARGIN
    data_per_px = x_max / (WIDTH_IN * DPI * (RIGHT - LEFT))
    px_per_char = LANE_FONT_PT * 0.62 * DPI / 72
    row_ends: list[float] = []
    placed = []
    for f, text in zip(faults, texts, strict=True):
        end = f.end_s if f.end_s is not None else end_s
        width = (len(text) + 2) * px_per_char * data_per_px
        x = max(min(f.start_s, x_max - width), 0.0)
        free = [row for row, free_at in enumerate(row_ends) if free_at <= min(x, f.start_s)]
        if free:
            row = free[0]
        elif len(row_ends) < MAX_LANE_ROWS:
            row = len(row_ends)
            row_ends.append(0.0)
        elif share:
            row = min(range(len(row_ends)), key=lambda r: row_ends[r])
        else:
            return None
        row_ends[row] = max(end, x + width)
        placed.append(_Placed(row, x, text))
    return placed


def _lane_height(faults: Sequence[FaultInterval], end_s: float) -> float:
    rows = max((p.row for p in _lane_layout(faults, end_s)), default=0) + 1
    return 0.22 * rows + 0.1


def _draw_lane(ax: Axes, faults: Sequence[FaultInterval], end_s: float) -> None:
    """The faults as labelled bars, where _lane_layout puts them."""
    layout = _lane_layout(faults, end_s)
    for f, p in zip(faults, layout, strict=True):
        end = f.end_s if f.end_s is not None else end_s
        colour = FAULT_COLOURS.get(f.kind, OTHER_FAULT_COLOUR)
        ax.broken_barh(
            [(f.start_s, max(end - f.start_s, 0.0))],
            (p.row + 0.1, 0.8),
            facecolors=colour,
            alpha=0.35,
        )
        ax.text(p.x, p.row + 0.5, " " + p.text, va="center", ha="left", fontsize=LANE_FONT_PT)
    ax.set_ylim(max((p.row for p in layout), default=0) + 1, 0)
    ax.set_yticks([])
    ax.set_ylabel("faults", rotation=0, ha="right", va="center", fontsize=9)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="x", bottom=False)
    if not faults:
        ax.text(
            0.5,
            0.5,
            "no faults",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
            color="#777",
        )


def _shade(ax: Axes, faults: Sequence[FaultInterval], end_s: float) -> None:
    for f in faults:
        end = f.end_s if f.end_s is not None else end_s
        colour = FAULT_COLOURS.get(f.kind, OTHER_FAULT_COLOUR)
        ax.axvspan(f.start_s, end, color=colour, alpha=0.13, linewidth=0, zorder=0)


def _finish_time_axis(ax: Axes, end_s: float) -> None:
    ax.set_xlim(0, end_s * X_MARGIN)
    ax.set_xlabel("seconds since the run started")
    ax.grid(True, axis="x", color="#e4e4e4", linewidth=0.6)


def _latency_figure(
    operations: Sequence[Operation], faults: Sequence[FaultInterval], end_s: float
) -> Figure:
    from matplotlib.lines import Line2D

    figure, (lane, ax) = _figure([_lane_height(faults, end_s), 4.2])
    _draw_lane(lane, faults, end_s)
    _shade(ax, faults, end_s)
    kinds = list(dict.fromkeys(op.kind for op in operations))
    marker = {kind: MARKERS[i % len(MARKERS)] for i, kind in enumerate(kinds)}
    groups: dict[tuple[str, Outcome], tuple[list[float], list[float]]] = defaultdict(
        lambda: ([], [])
    )
    for op in operations:
        xs, ys = groups[(op.kind, op.outcome)]
        xs.append(op.start_s)
        ys.append(max(op.latency_ms, 0.01))  # a log scale has no zero
    order = {Outcome.OK: 1, Outcome.UNKNOWN: 2, Outcome.FAILED: 3}  # the rare ones on top
    many = len(operations) > 20_000  # a blob of points: smaller and lighter ones
    for (kind, outcome), (xs, ys) in sorted(groups.items(), key=lambda g: order[g[0][1]]):
        ax.scatter(
            xs,
            ys,
            s=(4 if many else 9) if outcome is Outcome.OK else 22,
            marker=marker[kind],
            c=OUTCOME_COLOURS[outcome],
            alpha=(0.35 if many else 0.6) if outcome is Outcome.OK else 0.9,
            linewidths=0,
            zorder=order[outcome] + 1,
        )
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="major", axis="y", color="#e4e4e4", linewidth=0.6)
    counts = Counter(op.outcome for op in operations)
    handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            color=OUTCOME_COLOURS[o],
            label=f"{o.value} ({counts[o]:,})",
        )
        for o in Outcome
    ]
    if len(kinds) > 1:
        handles += [
            Line2D(
                [],
                [],
                linestyle="",
                marker=marker[k],
                color="#444",
                markerfacecolor="none",
                label=k,
            )
            for k in kinds
        ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False
    )
    if not operations:
        ax.text(0.5, 0.5, "no operations recorded", transform=ax.transAxes, ha="center")
    _finish_time_axis(ax, end_s)
    return figure


def _throughput_figure(
    operations: Sequence[Operation], faults: Sequence[FaultInterval], end_s: float
) -> Figure:
    figure, (lane, ax) = _figure([_lane_height(faults, end_s), 3.0])
    _draw_lane(lane, faults, end_s)
    _shade(ax, faults, end_s)
    width = _bin_width(end_s)
    bins = int(end_s / width) + 1
    edges = [i * width for i in range(bins + 1)]
    for outcome in Outcome:
        counts = [0] * bins
        for op in operations:
            if op.outcome is outcome:
                counts[min(int(op.end_s / width), bins - 1)] += 1
        if outcome is not Outcome.OK and not any(counts):
            continue
        rates = [c / width for c in counts]
        ax.stairs(
            rates,
            edges,
            color=OUTCOME_COLOURS[outcome],
            linewidth=1.4,
            label=f"{outcome.value} per second",
        )
    ax.set_ylabel(f"operations/s\n({width:g} s bins)")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", color="#e4e4e4", linewidth=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    _finish_time_axis(ax, end_s)
    return figure


def _roles_figure(
    spans: Mapping[str, Sequence[RoleSpan]], faults: Sequence[FaultInterval], end_s: float
) -> Figure:
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    nodes = sorted(spans)
    figure, (lane, ax, terms) = _figure(
        [_lane_height(faults, end_s), 0.42 * max(len(nodes), 1) + 0.3, 1.8]
    )
    _draw_lane(lane, faults, end_s)
    _shade(ax, faults, end_s)
    _shade(terms, faults, end_s)
    for row, node in enumerate(nodes):
        for s in spans[node]:
            ax.broken_barh(
                [(s.start_s, s.end_s - s.start_s)],
                (row - 0.38, 0.76),
                facecolors=ROLE_COLOURS.get(s.role, ROLE_COLOURS["unknown"]),
                linewidth=0,
            )
            if s.role == "leader" and s.term is not None and s.end_s - s.start_s > end_s / 60:
                ax.text(
                    (s.start_s + s.end_s) / 2,
                    row,
                    f"t{s.term}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                    fontweight="bold",
                )
        # Nodes mostly agree on the term: each line is lifted a little, so none hides another.
        lift = (row - (len(nodes) - 1) / 2) * 0.06
        times: list[float] = []
        values: list[float] = []
        for s in spans[node]:
            # No answer: a gap in the line, not a fall to zero.
            value = s.term + lift if s.term is not None else float("nan")
            times += [s.start_s, s.end_s]
            values += [value, value]
        terms.plot(times, values, linewidth=1.4, label=node)
    ax.set_yticks(range(len(nodes)), nodes)
    ax.set_ylim(max(len(nodes), 1) - 0.5, -0.5)
    ax.set_ylabel("role")
    seen = {s.role for node_spans in spans.values() for s in node_spans}
    legend = [
        Patch(color=colour, label=role if role is not None else "no answer")
        for role, colour in ROLE_COLOURS.items()
        if role in seen
    ]
    ax.legend(
        handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False
    )
    if not nodes:
        ax.text(0.5, 0.5, "no role samples", transform=ax.transAxes, ha="center")
    terms.set_ylabel("term")
    terms.yaxis.set_major_locator(MaxNLocator(integer=True))
    terms.grid(True, axis="y", color="#e4e4e4", linewidth=0.6)
    if nodes:
        terms.legend(
            loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, title="node"
        )
    _finish_time_axis(terms, end_s)
    return figure
