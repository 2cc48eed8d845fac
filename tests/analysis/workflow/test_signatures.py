"""The workflow's functions take a handful of parameters: settings travel as typed values (ExportSpec,
CoreChoice, AdapterSet), not as long argument lists (counted with ast, `self`/`cls` excluded)."""
from __future__ import annotations

import ast
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[3] / "analysis" / "workflow"
MAX_PARAMS = 7


def _counts() -> dict[str, int]:
    out = {}
    for path in sorted(WORKFLOW.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                out[f"{path.name}:{node.name}"] = len([n for n in names if n not in ("self", "cls")])
    return out


def test_no_workflow_function_takes_more_than_seven_parameters() -> None:
    counts = _counts()
    assert counts["pipeline.py:run_merge"] >= 5  # the counter sees the functions
    assert {name: n for name, n in counts.items() if n > MAX_PARAMS} == {}
