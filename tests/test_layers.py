"""The layer map as a test (STYLE: "a docstring's 'never imports' is a claim; a test that reads
the imports makes it a fact", as trio's _tests/test_exports.py does for its exports).

RULES below encodes DESIGN.md's layer map ("Layers": each layer imports only the layers under
it; the Raft core does no I/O; nothing in a node knows it is being tested) and the module
docstrings that say what a module must not import. The map itself lives in DESIGN.md, outside
the repository, so it is restated here rather than parsed at test time.

A module falls under the rule of its longest dotted prefix in RULES: a new node module
(node/logclock.py, node/memory_transport.py) falls under "node", a new supervisor module under
"supervisor", until someone gives it a rule of its own. A failure names the module, the line,
the forbidden import and the rule with the reason it exists.

Every import counts, wherever it is: at the top, inside a function, and under `if
TYPE_CHECKING:` too. A type-only arrow is still an arrow between layers (the code means the
other layer's types), and the day someone moves it out of the guard nothing else would notice.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("node", "client", "protos", "supervisor", "benchmarks", "tests")  # top-level packages
CHECKED = ("node", "client", "protos", "supervisor", "benchmarks")  # what the rules cover

# File access, clocks, sockets, threads and randomness: none of it in the pure core.
IO_MODULES = (
    "asyncio",
    "concurrent",
    "datetime",
    "fcntl",
    "grpc",
    "io",
    "mmap",
    "os",
    "pathlib",
    "select",
    "selectors",
    "secrets",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "uuid",
)


@dataclass(frozen=True)
class Rule:
    """What the modules under one prefix may import.

    may: project modules allowed, as prefixes ("node.raft" allows node.raft and node.raft.x);
        "=node" allows exactly the module `node`. Every other project import is forbidden.
    never: project prefixes forbidden even where `may` allows them.
    external: outside modules forbidden (by top-level name), each with the names that may
        still be imported from it (`from random import Random`: only the type of an injected
        RNG).
    no_open: calling the built-in open() is forbidden too (file access without an import).
    """

    why: str
    may: tuple[str, ...]
    never: tuple[str, ...] = ()
    external: Mapping[str, frozenset[str]] = field(default_factory=dict)
    no_open: bool = False


def _forbid(*modules: str, **allowed: frozenset[str]) -> dict[str, frozenset[str]]:
    return {m: allowed.get(m, frozenset()) for m in modules}


NODE_PARTS = ("node",)  # a node module may use any node layer the rules below let it
NEVER_TESTED = ("client", "supervisor", "benchmarks", "tests")

# The supervisor's library, bottom first: each module imports only those before it (the
# supervisor/__init__.py docstring). The tools (repl, check, bench) import the library only;
# __main__ imports the tools too.
SUPERVISOR_LIBRARY = (
    "errors",
    "ports",
    "links",
    "processes",
    "events",
    "nodeconfig",
    "formation",
    "certs",
    "history",
    "report",
    "sender",
    "load",
    "cluster",
    "membership",
    "chaos",
    "web.guard",
    "web.observer",
    "web.server",
)


def _library_below(name: str) -> tuple[str, ...]:
    index = SUPERVISOR_LIBRARY.index(name)
    return tuple(f"supervisor.{m}" for m in SUPERVISOR_LIBRARY[:index])


# The chat client library's parts under its facade (client/api.py), bottom first: each imports
# only those before it, so none reaches up into what uses it (the facade, the REPL).
CLIENT_LIBRARY = ("values", "router", "writes", "subscription")


def _client_below(name: str) -> tuple[str, ...]:
    index = CLIENT_LIBRARY.index(name)
    return tuple(f"client.{m}" for m in CLIENT_LIBRARY[:index])


_SUPERVISOR_WHY = (
    "DESIGN.md Layers: the supervisor stands beside the client, over node.config and protos; "
    "it never imports the client or node internals, and never reaches into a node"
)

RULES: dict[str, Rule] = {
    # -- the node, bottom up ---------------------------------------------------------------
    "node.config": Rule(
        "DESIGN.md Layers: node/config.py is the bottom of the map, the one loader node, "
        "supervisor and client share; it imports nothing from chatbooth",
        may=("node.config",),
    ),
    "node.raft": Rule(
        "DESIGN.md Layers: node/raft/ is a deterministic state machine: no asyncio, grpc, "
        "time, random (a seeded RNG is passed in) or file access; it imports only node.raft",
        may=("node.raft",),
        external=_forbid(*IO_MODULES, "random", random=frozenset({"Random"})),
        no_open=True,
    ),
    "node.storage": Rule(
        "DESIGN.md Layers: node/storage/ is the durable log under the driver: the Raft types "
        "it stores and node.config, no network, no event loop",
        may=("node.storage", "node.raft.types", "node.config"),
        external=_forbid("grpc", "asyncio"),
    ),
    "node.chat": Rule(
        "DESIGN.md Layers and 'node/chat/': the chat state machine applies committed commands "
        "and nothing else, deterministically: no clock, no randomness, no network",
        may=("node.chat", "node.config"),
        external=_forbid("grpc", "asyncio", "time", "random", "secrets", "uuid", "datetime"),
    ),
    "node.transport": Rule(
        "STYLE 'Seams': the gRPC transport is one side of the driver's Transport seam; it "
        "carries Raft messages and knows nothing of the driver, the chat or the storage",
        may=("node.transport", "node.raft", "node.wire", "node.seams", "node.config", "protos"),
    ),
    "node.driver": Rule(
        "DESIGN.md Layers and STYLE 'Seams': the driver sits under the servicers and takes "
        "its transport and clock as seams, so it imports neither grpc nor the gRPC transport",
        may=NODE_PARTS,
        never=("node.server", "node.transport", "node.__main__"),
        external=_forbid("grpc"),
    ),
    "node": Rule(
        "DESIGN.md Layers: a node is node/* over protos; nothing in a node knows it is being "
        "tested, or supervised (no client, supervisor, benchmarks or tests)",
        may=(*NODE_PARTS, "protos"),
        never=("node.__main__",),
    ),
    "protos": Rule(
        "DESIGN.md Layers: protos/ is the wire contract, under everything that speaks it",
        may=("protos",),
    ),
    # -- the client --------------------------------------------------------------------------
    "client": Rule(
        "DESIGN.md Layers: the client speaks gRPC (protos) to nodes and reads cluster.yaml "
        "with node.config; no node internals, never the supervisor; prompt_toolkit only in "
        "its REPL",
        may=("client", "protos", "node.config"),
        never=("client.__main__",),
        external=_forbid("prompt_toolkit"),
    ),
    "client.repl": Rule(
        "DESIGN.md Layers: client/repl.py is the chat UI over client/api.py",
        may=("client", "protos", "node.config"),
        never=("client.__main__",),
    ),
    "client.__main__": Rule(
        "DESIGN.md Layers: `python -m client` runs the REPL over the client library",
        may=("client", "protos", "node.config"),
    ),
    **{
        f"client.{name}": Rule(
            "client/api.py's docstring: the facade over its parts; a part imports only those "
            f"under it ({', '.join(CLIENT_LIBRARY)}), client.errors and client.stub, never "
            "the facade or the REPL",
            may=(*_client_below(name), "client.errors", "client.stub", "protos", "node.config"),
            external=_forbid("prompt_toolkit"),
        )
        for name in CLIENT_LIBRARY
    },
    "client.lines": Rule(
        "client/lines.py's docstring: the stdin reader both REPLs share imports the standard "
        "library only, so the supervisor may use it without leaning on the client library",
        may=(),
    ),
    # -- the supervisor ----------------------------------------------------------------------
    "supervisor": Rule(
        _SUPERVISOR_WHY + "; a tool (repl, check, bench) or the package uses the library, "
        "never another tool",
        may=(*(f"supervisor.{m}" for m in SUPERVISOR_LIBRARY), "node.config", "protos"),
    ),
    **{
        f"supervisor.{name}": Rule(
            _SUPERVISOR_WHY + "; in the library, a module imports only those under it "
            f"({', '.join(SUPERVISOR_LIBRARY)})",
            may=(*_library_below(name), "node.config", "protos"),
            external=_forbid("prompt_toolkit"),
        )
        for name in (
            "nodeconfig",
            "formation",
            "certs",
            "report",
            "sender",
            "load",
            "membership",
            "chaos",
            "web.observer",
            "web.server",
        )
    },
    **{
        f"supervisor.{name}": Rule(
            f"supervisor/{name}.py's docstring: the standard library (and psutil) and "
            "supervisor.errors only, nothing from node, client or protos",
            may=("supervisor.errors",),
        )
        for name in ("errors", "ports", "links", "processes", "events", "web.guard")
    },
    "supervisor.history": Rule(
        "supervisor/history.py's docstring: pure data in, a verdict out: no I/O, no grpc, "
        "nothing of the node",
        may=(),
        external=_forbid("grpc", "asyncio", "os", "socket", "subprocess", "threading"),
    ),
    "supervisor.cluster": Rule(
        _SUPERVISOR_WHY + "; the Cluster finds `python -m node` through the node package "
        "itself (=node), and uses the library under it",
        may=(*_library_below("cluster"), "=node", "node.config", "protos"),
        external=_forbid("prompt_toolkit"),
    ),
    "supervisor.repl": Rule(
        _SUPERVISOR_WHY + "; the fault REPL uses the library, and of the client only "
        "client.lines (the stdin reader the chat REPL uses too, standard library only)",
        may=(
            *(f"supervisor.{m}" for m in SUPERVISOR_LIBRARY),
            "node.config",
            "protos",
            "=client.lines",
        ),
    ),
    "supervisor.__main__": Rule(
        _SUPERVISOR_WHY + "; `python -m supervisor` runs the tools over the library",
        may=("supervisor", "node.config", "protos"),
        never=("supervisor.__main__",),
    ),
    # -- the benchmarks ----------------------------------------------------------------------
    "benchmarks": Rule(
        "DESIGN.md Speed: benchmark scripts measure every layer from above, the pure core "
        "through the simulator's harness included; they import no test module otherwise",
        may=("node", "protos", "client", "supervisor", "benchmarks", "tests.simulator"),
        never=("node.__main__", "client.__main__", "supervisor.__main__"),
    ),
}


# -- reading the imports ------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the module imported, absolute
    names: tuple[str, ...]  # for `from module import a, b`; () for `import module`


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_modules(root: Path) -> set[str]:
    return {module_name(root, p) for top in PROJECT for p in (root / top).rglob("*.py")}


def imports_of(root: Path, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import in the file at any depth (functions, TYPE_CHECKING blocks included).
    `from package import submodule` counts as an import of the submodule."""
    module = module_name(root, path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "__future__":
                continue
            plain: list[str] = []
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield Import(node.lineno, f"{base}.{alias.name}", ())
                else:
                    plain.append(alias.name)
            if plain:
                yield Import(node.lineno, base, tuple(plain))


def opens_files(path: Path) -> list[int]:
    """Lines that call the built-in open()."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
    ]


def rule_for(module: str) -> tuple[str, Rule] | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in RULES:
            return prefix, RULES[prefix]
    return None


def _matches(target: str, entry: str) -> bool:
    if entry.startswith("="):
        return target == entry[1:]
    return target == entry or target.startswith(entry + ".")


def _forbidden(
    root: Path, path: Path, module: str, rule: Rule, known: set[str]
) -> Iterator[tuple[int, str]]:
    """(line, what) for each import of the module at path that rule forbids."""
    for imp in imports_of(root, path, known):
        top_name = imp.module.split(".")[0]
        if top_name in PROJECT:
            if imp.module == module:
                continue
            allowed = any(_matches(imp.module, e) for e in rule.may)
            if not allowed or any(_matches(imp.module, e) for e in rule.never):
                yield imp.line, imp.module
        elif top_name in rule.external:
            permitted = rule.external[top_name]
            extra = [n for n in imp.names if n not in permitted]
            if not imp.names or extra or imp.module != top_name:
                yield imp.line, f"{imp.module} ({', '.join(extra)})" if extra else imp.module
    if rule.no_open:
        for line in opens_files(path):
            yield line, "the built-in open() (file access)"


def violations(root: Path) -> list[str]:
    """Every import under root's checked packages that its rule forbids, for people."""
    known = _known_modules(root)
    found: list[str] = []
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(root, path)
            matched = rule_for(module)
            where = path.relative_to(root)
            if matched is None:
                found.append(f"{where}: {module} falls under no rule of the layer map")
                continue
            prefix, rule = matched
            for line, what in _forbidden(root, path, module, rule, known):
                found.append(
                    f"{where}:{line}: {module} imports {what}: forbidden by rule "
                    f"{prefix!r} ({rule.why})"
                )
    return found


# -- the tests ----------------------------------------------------------------------------


def test_every_module_keeps_to_the_layer_map() -> None:
    found = violations(ROOT)
    assert not found, "imports the layer map forbids:\n" + "\n".join(found)


def test_every_package_of_the_distribution_has_rules() -> None:
    """A new top-level package must be placed on the map before it is used."""
    packages = {
        p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests",)
    }
    assert packages == set(CHECKED)
    assert all(rule_for(top) is not None for top in CHECKED)


def test_a_new_node_module_falls_under_a_sensible_rule() -> None:
    match = rule_for("node.logclock")
    assert match is not None and match[0] == "node"
    match = rule_for("node.raft.quorum")
    assert match is not None and match[0] == "node.raft"
    match = rule_for("supervisor.webhooks")
    assert match is not None and match[0] == "supervisor"


PLANTED = {
    # the arrow this issue removed: a supervisor tool leaning on the chat client
    "supervisor/check.py": ("from client.api import ChatClient\n", "client.api", "'supervisor'"),
    # a part of the client library reaching up to its facade
    "client/router.py": ("from client.api import ChatClient\n", "client.api", "'client.router'"),
    # I/O in the pure core, hidden in a function
    "node/raft/log.py": (
        "def _later() -> None:\n    import time\n",
        "time",
        "'node.raft'",
    ),
    # a type-only arrow still counts
    "node/chat/state.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from node.driver import X\n",
        "node.driver",
        "'node.chat'",
    ),
    # randomness beyond the type of an injected RNG
    "node/raft/core.py": ("from random import Random, randrange\n", "random (randrange)", ""),
    # a library module reaching up to a tool
    "supervisor/cluster.py": ("from supervisor import repl\n", "supervisor.repl", ""),
    # a node that knows it is being tested
    "node/logclock.py": ("import tests.simulator.harness\n", "tests.simulator.harness", "'node'"),
    # file access without an import
    "node/raft/progress.py": ("data = open('x').read()\n", "open()", ""),
}


@pytest.fixture
def copy_of_the_tree(tmp_path: Path) -> Path:
    for top in PROJECT:
        if (ROOT / top).is_dir():
            shutil.copytree(
                ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__")
            )
    return tmp_path


def test_a_planted_forbidden_import_fails(copy_of_the_tree: Path) -> None:
    root = copy_of_the_tree
    assert violations(root) == []  # the copy is as clean as the tree it came from
    for relative, (code, _, _) in PLANTED.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write("\n" + code)
    found = violations(root)
    for relative, (_, what, rule) in PLANTED.items():
        module = relative.removesuffix(".py").replace("/", ".")
        hits = [f for f in found if f.startswith(relative + ":") and what in f]
        assert hits, f"planted {what} in {relative} was not reported:\n" + "\n".join(found)
        assert f" {module} imports " in hits[0] and f"forbidden by rule {rule}" in hits[0]
    assert len(found) == len(PLANTED), "\n".join(found)


def test_relative_imports_are_read_as_what_they_name(tmp_path: Path) -> None:
    (tmp_path / "node" / "raft").mkdir(parents=True)
    (tmp_path / "node" / "__init__.py").write_text("")
    (tmp_path / "node" / "driver.py").write_text("")
    (tmp_path / "node" / "raft" / "__init__.py").write_text("from . import core\n")
    (tmp_path / "node" / "raft" / "core.py").write_text("from ..driver import RaftDriver\n")
    found = violations(tmp_path)
    assert len(found) == 1 and "node.raft.core imports node.driver" in found[0], found
