"""`merge ... --eval --model FOLDER --data MAPPING`: the measure step of the merge workflow, end to end.

The measured rows in preview.json are checked against a second route (the Evaluator on the adapter the
export wrote, and on each input), and a review report of the proposal shows the model identity, the data
hashes and the rows.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from helpers.model_folders import model_folder, task_adapters

from analysis.cli import main


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("measure")
    folder = model_folder(root, "llama", seed=2)
    paths = task_adapters(folder, root, ["upper", "reverse"], seed=20)
    for k, task in enumerate(["upper", "reverse"]):
        rows = [{"prompt": f"{task} {w}\nOutput:", "answer": w.upper() if k == 0 else w[::-1]}
                for w in ("abc", "dog", "sun", "tree", "moon")]
        (root / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "general.jsonl").write_text(json.dumps({"text": "plain text for a general check"}) + "\n")
    mapping = root / "tasks.yaml"
    mapping.write_text("tasks:\n  upper: {file: upper.jsonl}\n  reverse: {file: reverse.jsonl}\n"
                       "  general: {file: general.jsonl, metric: nll}\n"
                       "adapters:\n  - {path: adapters/upper, tasks: [upper, general]}\n"
                       "  - {path: adapters/reverse, tasks: [reverse, general]}\n")
    return {"root": root, "folder": folder, "paths": paths, "mapping": mapping}


def test_merge_eval_writes_measured_rows_that_a_second_route_reproduces(job: dict[str, Any],
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from analysis.adapters import load_adapter
    from analysis.evaluation import Evaluator, ModelSpec, load_data, load_model

    out = job["root"] / "merged"
    code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(out), "--eval",
                 "--model", str(job["folder"]), "--data", str(job["mapping"]), "--metric", "both", "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"measured on {job['folder']}" in printed.out and "merged" in printed.out
    measured = json.loads((out / "preview.json").read_text())["measured"]
    assert measured["model"]["kind"] == "folder" and measured["model"]["files"][0]["file"] == "model.safetensors"
    files = {d["task"]: d for d in measured["data"]}
    assert files["upper"]["sha256"] == hashlib.sha256((job["root"] / "upper.jsonl").read_bytes()).hexdigest()
    assert files["upper"]["rows"] == 5 and files["general"]["metric"] == "nll"
    rows = {(r["task"], r["metric"]): r for r in measured["rows"]}
    assert set(rows) == {("upper", "exact"), ("upper", "nll"), ("reverse", "exact"), ("reverse", "nll"),
                         ("general", "nll")}
    # second route: the Evaluator on the adapter written and on each input
    ev = Evaluator(load_model(ModelSpec(str(job["folder"]), device="cpu")), load_data([job["mapping"]], metric="both"))
    written = ev.score(load_adapter(out).modules)
    inputs = [ev.score(load_adapter(p).modules) for p in job["paths"]]
    bare = ev.score({})
    for (task, metric), r in rows.items():
        assert r["merged"] == pytest.approx(written[task].value(metric), rel=1e-6)
        assert r["base"] == pytest.approx(bare[task].value(metric), rel=1e-6)
        assert r["n"] == (1 if task == "general" else 5)
        for i, name in enumerate(["upper", "reverse"]):
            assigned = task in (name, "general")  # the mapping: each adapter on its task and the general check
            value = r["inputs"][i]["value"]
            assert (value is None) == (not assigned)
            if assigned:
                assert value == pytest.approx(inputs[i][task].value(metric), rel=1e-6)
    assert rows[("general", "nll")]["merged"] != pytest.approx(rows[("general", "nll")]["base"])


def test_review_report_shows_identity_data_and_measured_rows(job: dict[str, Any], tmp_path: Path) -> None:
    from analysis.review import ReviewStore, propose
    from analysis.review.evidence import InputOverlap
    from analysis.review.reports import render_report

    out = job["root"] / "merged"
    if not (out / "preview.json").is_file():
        pytest.skip("needs the merge of the test above")
    measured = json.loads((out / "preview.json").read_text())["measured"]
    with ReviewStore(tmp_path / "review.db") as store:
        proposal = store.get(propose(store, out, "merge with measured rows", "ana"))
    sha = measured["model"]["sha256"][:16]
    upper_sha = next(d["sha256"] for d in measured["data"] if d["task"] == "upper")[:16]
    none = InputOverlap(False, "not needed here")
    md = render_report(proposal, "md", none)
    assert "### Measured" in md and sha in md and upper_sha in md
    assert "| task | metric | n | merged | base | upper | reverse |" in md
    merged_upper = next(r["merged"] for r in measured["rows"] if (r["task"], r["metric"]) == ("upper", "nll"))
    assert f"| upper | nll | 5 | {merged_upper:.4g} |" in md
    html = render_report(proposal, "html", none)
    assert "<h2>Measured</h2>" in html and sha in html and upper_sha in html
