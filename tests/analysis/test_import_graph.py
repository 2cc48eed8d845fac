"""The import graph of analysis/ has no cycle, counting the imports hidden inside functions.

Built with `ast` from the source (nothing is imported): an edge M -> N for every `import`/`from ... import` of an
analysis module N anywhere in M (module level or inside a function), plus M -> P for every package P whose
`__init__` such an import runs (P an ancestor of N but not of M: importing `analysis.merge.claims` from outside
`analysis.merge` runs `analysis/merge/__init__.py` first). A cycle would mean some import order breaks, or that a
function-level import is hiding one.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "analysis"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, here: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against this module's package
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]


def _imports(tree: ast.AST) -> list[ast.AST]:
    """Every import statement, except those under `if TYPE_CHECKING:` (never run)."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for here, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, here, is_package, modules):
                while target and target not in modules:  # `import analysis.x.y as z`, or a name in a module
                    target = target.rpartition(".")[0]
                if not target.startswith(PACKAGE) or target == here:
                    continue
                graph[here].add(target)
                parts = target.split(".")
                for k in range(1, len(parts)):  # packages whose __init__ this import runs
                    parent = ".".join(parts[:k])
                    if parent != here and not here.startswith(parent + "."):
                        graph[here].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_find_cycle_sees_a_cycle_and_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "analysis.adapters.limits" in graph["analysis.export.recipe"]  # inside `load_recipe`
    assert "analysis.merge.registry" in graph["analysis.merge.api"]  # module level
    assert "analysis.merge" in graph["analysis.workflow.pipeline"]  # the package whose __init__ it runs


def test_analysis_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
