"""No import cycles in src/headrace: modules form layers, each importing only below it.

The graph is read from the source (no module is imported): an edge for every ``import``
and ``from ... import`` of a Headrace module, at module level or inside a function (a
function-local import hides a cycle; it does not break it). Imports under
``if TYPE_CHECKING:`` are left out: they never run. ``from headrace.x import y`` is an
edge to ``headrace.x.y`` when that is a module, else to ``headrace.x``; a package's
``__init__`` is the package's own node. ``import headrace.x.y`` is an edge to
``headrace.x.y`` only: its parent packages are imported first, but they are never the
importer's reason for a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "headrace"

# Cycles allowed for now, each as the sorted tuple of its modules, with why. Only for
# cycles through modules this change could not edit; a new entry needs a reason and an
# owner who removes it.
KNOWN: set[tuple[str, ...]] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _type_checking(child):
            for branch in child.orelse:  # the else of TYPE_CHECKING does run
                yield from _imports_in(branch)
        else:
            yield from _imports(child)


def _imports_in(node: ast.stmt) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = name.split(".") if is_package else name.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Each Headrace module, and the Headrace modules it imports."""
    found = modules()
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, name, is_package):
                # `from headrace.x import y`: the module y if there is one, else headrace.x
                while target and target not in found:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(tuple(sorted(component)))
    return found


def describe(component: tuple[str, ...], graph: dict[str, set[str]]) -> str:
    members = set(component)
    return "\n".join(f"  {m} imports {', '.join(sorted(graph[m] & members))}" for m in component)


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    new = [c for c in cycles(graph) if c not in KNOWN]
    assert not new, "import cycles (break them by moving what both sides need lower):\n" + (
        "\n".join(describe(c, graph) for c in new)
    )


def test_the_known_cycles_are_still_there() -> None:
    """An entry of KNOWN that no longer matches a cycle is stale: remove it."""
    stale = KNOWN - set(cycles(import_graph()))
    assert not stale, f"not cycles any more, remove from KNOWN: {sorted(stale)}"


def test_the_graph_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    graph = import_graph()
    # Function-local: the Kafka connector is imported only when a Kafka source is built.
    assert "headrace.connectors.kafka" in graph["headrace.build.connectors"]
    # A submodule named in `from package import submodule`.
    assert "headrace.config.base" in graph["headrace.config"]
    # A cycle is found and named, however long.
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(ring) == [("a", "b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_building_goes_one_way() -> None:
    """config -> build -> builder -> engine -> spec: nothing imports back up that chain
    (the engine takes a spec, so the spec sits below it)."""
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    above = {"headrace", "headrace.pipeline", "headrace.cli"}
    assert not reaches("headrace.builder") & ({"headrace.config", "headrace.build"} | above)
    engine, spec = "headrace.runtime.engine", "headrace.runtime.spec"
    assert not reaches(spec) & {engine, "headrace.builder", "headrace.build", *above}
    assert not reaches(engine) & {"headrace.builder", "headrace.build", *above}
    assert not {m for m in reaches("headrace.config") if m.startswith("headrace.build")}
    assert graph["headrace.defaults"] == set()
