"""The house's import rules, checked on the source: no import cycle anywhere (also none inside a room), and
imports only along the room direction: backend -> labelers, trainers; trainers -> labelers; labelers and
trainers never import backend; nothing imports the labelloop CLI package.

Every `import` statement counts, also those inside functions or under `if TYPE_CHECKING:`: a lazy import
hides a cycle from the interpreter, not from the reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("backend", "labelers", "trainers", "labelloop")
# room -> the other rooms it may import
ALLOWED = {"backend": {"labelers", "trainers", "configs"}, "trainers": {"labelers", "configs"},
           "labelers": {"configs"}, "labelloop": {"backend", "labelers", "trainers", "configs"},
           "configs": set()}


def module_files(root: Path, packages) -> dict[str, Path]:
    """Return {dotted module name: file} for every .py file under the given top-level packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Return the known modules that module `name` (in `path`) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def known(target: str) -> str | None:
        while target and target not in modules:  # "a.b.func" -> "a.b"
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
        else:
            continue
        for target in targets:
            resolved = known(target)
            if resolved and resolved != name:
                found.add(resolved)
    return found


def import_graph(root: Path, packages) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle (as a closed path) per strongly connected component with more than one module."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(_closed_path(sorted(component), graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _closed_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """Return a path start -> ... -> start inside one strongly connected component (breadth first)."""
    members, start = set(component), component[0]
    previous, frontier = {start: None}, [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]  # walk back to start, then read it forwards
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1] + [start]
            if nxt not in previous:
                previous[nxt] = node
                frontier.append(nxt)
    return component


def direction_violations(graph: dict[str, set[str]], allowed=ALLOWED) -> list[str]:
    """Return "a -> b" for each import from one room into a room it may not import."""
    bad = []
    for name, targets in sorted(graph.items()):
        room = name.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != room and other not in allowed.get(room, set()):
                bad.append(f"{name} -> {target}")
    return bad


# -- the house ---------------------------------------------------------------------------------------------------
def test_no_import_cycles_in_any_room():
    cycles = find_cycles(import_graph(ROOT, ROOMS + ("configs",)))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_follow_the_room_direction():
    assert direction_violations(import_graph(ROOT, ROOMS + ("configs",))) == []


def test_the_walk_sees_every_room():
    graph = import_graph(ROOT, ROOMS)
    assert {name.split(".")[0] for name in graph} == set(ROOMS)
    assert "backend.model" in graph["backend.runtime"]  # a known edge, so the resolver really resolves


# -- the checker can fail --------------------------------------------------------------------------------------
def _package(tmp_path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_a_cycle_through_relative_and_lazy_imports(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/b.py": "def thing():\n    from pkg.sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import a\n",
        "pkg/d.py": "import pkg.a\n",  # imports into the cycle, not part of it
    })
    cycles = find_cycles(import_graph(root, ["pkg"]))
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_checker_finds_imports_against_the_direction(tmp_path):
    root = _package(tmp_path, {
        "labelers/__init__.py": "", "labelers/x.py": "from backend.y import z\n",
        "backend/__init__.py": "", "backend/y.py": "import labelers.x\nz = 1\n",
        "trainers/__init__.py": "", "trainers/t.py": "from labelers import x\nfrom backend import y\n",
    })
    graph = import_graph(root, ["labelers", "backend", "trainers"])
    assert direction_violations(graph) == ["labelers.x -> backend.y", "trainers.t -> backend.y"]
    assert find_cycles(graph) == [["backend.y", "labelers.x", "backend.y"]]
