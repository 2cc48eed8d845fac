"""A measured evidence record written by hand (the shape `analysis.evaluation.measure` writes), for the
decision-view tests of the library, the Review page and the reports."""
from __future__ import annotations

PREDICTED = {"value": 0.8, "low": 0.6, "high": 0.95, "basis": "data-free (core kept)", "spearman_heldout": 0.71,
             "mae_heldout": 0.09, "measured_on": "sample set, 45 merges"}


def evidence(method: str = "isolation", *, predicted: bool = True, own_field: bool = True) -> dict:
    """Two inputs (math_add, format_date) measured by exact match on 32 rows, one answer-NLL row and a text task."""
    inputs = lambda a, b: [{"index": 0, "name": "math_add", "value": a}, {"index": 1, "name": "format_date", "value": b}]  # noqa: E731
    rows = [
        {"task": "math_add", "metric": "exact", "n": 32, "merged": 28 / 32, "base": 0.0, "inputs": inputs(30 / 32, 0.0)},
        {"task": "format_date", "metric": "exact", "n": 32, "merged": 7 / 32, "base": 0.0, "inputs": inputs(0.0, 8 / 32)},
        {"task": "format_date", "metric": "nll", "n": 32, "merged": 1.5, "base": 3.0, "inputs": inputs(2.9, 1.0)},
        {"task": "general", "metric": "nll", "n": 16, "merged": 2.1, "base": 2.0, "inputs": inputs(2.2, 2.3)},
    ]
    for r in rows:
        if own_field:
            r["own"] = {"math_add": 0, "format_date": 1}.get(r["task"])
    tasks = [{"index": 0, "name": "math_add", "core_retention": 0.9},
             {"index": 1, "name": "format_date", "core_retention": 0.7}]
    if predicted:
        tasks[0]["predicted_retention"] = PREDICTED
    return {"evidence_version": 2, "method": method, "tasks": tasks, "measured": {
        "model": {"kind": "sample", "name": "SmolLM2", "architecture": "LlamaForCausalLM", "sha256": "ab" * 32,
                  "device": "cpu", "dtype": "float32"},
        "data": [{"task": "math_add", "file": "/d/math_add.jsonl", "sha256": "cd" * 32, "rows": 100, "n": 32,
                  "metric": "exact", "kind": "answer"},
                 {"task": "general", "file": "/d/general.jsonl", "sha256": "ef" * 32, "rows": 16, "n": 16,
                  "metric": "nll", "kind": "text"}],
        "rows": rows, "warnings": []}}
