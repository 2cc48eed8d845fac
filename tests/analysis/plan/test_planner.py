"""The planner on tiny adapters with a fake evaluator (accuracy = cosine of the merged update with the task's
own): no returned group has a task below the bar, singletons are the inputs, and the export re-evaluates the
same. The fake evaluator makes the outcome known in advance: an identical twin merges, unrelated tasks do not."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny import save_peft_adapter, tiny_llama

from analysis.adapters import load_adapter
from analysis.errors import AtlasError
from analysis.plan import Planner
from analysis.plan.export import export_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "consolidate"))
from consolidate_tiny import TARGETS, make_adapters  # noqa: E402

TASKS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plan")
    paths = make_adapters(root, TASKS)
    save_peft_adapter(tiny_llama(), root / "alpha_twin", seed=10, r=4, lora_alpha=8, target_modules=TARGETS)
    return [load_adapter(p) for p in paths + [root / "alpha_twin"]]


def cosine_evaluator(adapters):
    own = {a.name: a.modules for a in adapters}
    calls = []

    def evaluate(deltas, tasks):
        calls.append(list(tasks))
        out = {}
        for t in tasks:
            num = sum(float((deltas[m].dense(torch.float64) * d.dense(torch.float64)).sum()) for m, d in own[t].items())
            n1 = sum(float(deltas[m].dense(torch.float64).square().sum()) for m in own[t]) ** 0.5
            n2 = sum(float(d.dense(torch.float64).square().sum()) for d in own[t].values()) ** 0.5
            out[t] = round(max(0.0, num / (n1 * n2)), 4)
        return out

    return evaluate, calls


def test_measured_plan_never_returns_a_group_below_the_bar(adapters, tmp_path):
    evaluate, calls = cosine_evaluator(adapters)
    plan = Planner(0.9, evaluate=evaluate).plan(adapters)
    assert plan.own_accuracy == {a.name: 1.0 for a in adapters}
    for g in plan.groups:
        assert g.accepted and min(g.measured.values()) >= 0.9
    tasks = sorted(t for g in plan.groups for t in g.tasks)
    assert tasks == sorted(a.name for a in adapters)  # a partition
    merged = [sorted(g.tasks) for g in plan.groups if len(g.tasks) > 1]
    assert merged == [["alpha", "alpha_twin"]]  # the twin merges; unrelated random tasks (cos ~ 0.7) do not
    assert any(not t.accepted for t in plan.trials)  # rejected groups were tried and split
    # export, then the same evaluator on the written files: the group still clears the bar
    data = export_plan(plan, adapters, tmp_path / "out")
    assert data["adapters_out"] == 3 and json.loads((tmp_path / "out" / "plan.json").read_text()) == data
    for g in data["groups"]:
        written = load_adapter(tmp_path / "out" / g["path"])
        acc = evaluate(written.modules, g["tasks"])
        assert min(acc.values()) >= 0.9, g
        if len(g["tasks"]) == 1:
            src = next(a for a in adapters if a.name == g["tasks"][0])
            assert written.sha256 == src.sha256  # singletons are copied as they are


def test_bar_of_one_still_merges_identical_twins_only(adapters):
    evaluate, _ = cosine_evaluator(adapters)
    plan = Planner(0.999, evaluate=evaluate).plan(adapters)
    assert [sorted(g.tasks) for g in plan.groups if len(g.tasks) > 1] == [["alpha", "alpha_twin"]]


def test_data_free_plan_uses_the_prediction_and_trial_budget(adapters):
    plan = Planner(0.9, max_trials=3).plan(adapters)
    assert plan.own_accuracy is None and len(plan.trials) <= 3
    for g in plan.groups:
        assert g.measured is None
        assert len(g.tasks) == 1 or min(g.predicted.values()) >= 0.9


def test_bad_bar_is_one_error():
    with pytest.raises(AtlasError, match="min-retention"):
        Planner(1.5)


@pytest.fixture(scope="module")
def same_leaf(adapters, tmp_path_factory):
    """alpha, its twin and beta saved as run1/adapter, run2/adapter, run3/adapter: one leaf name, three inputs."""
    import shutil

    root = tmp_path_factory.mktemp("leaf")
    by_name = {a.name: a for a in adapters}
    paths = []
    for k, name in enumerate(["alpha", "alpha_twin", "beta"], start=1):
        dest = root / f"run{k}" / "adapter"
        shutil.copytree(Path(by_name[name].path), dest)
        paths.append(dest)
    return paths


def test_same_leaf_names_are_told_apart_and_keyed_by_index(same_leaf, tmp_path):
    from analysis.workflow import AdapterSet

    inputs = AdapterSet.from_paths(same_leaf).adapters
    assert [a.name for a in inputs] == ["run1/adapter", "run2/adapter", "run3/adapter"]
    evaluate, _ = cosine_evaluator(inputs)
    plan = Planner(0.9, evaluate=evaluate).plan(inputs)
    assert sorted((g.members, g.tasks) for g in plan.groups) == [
        ([0, 1], ["run1/adapter", "run2/adapter"]), ([2], ["run3/adapter"])]
    data = export_plan(plan, inputs, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "group00_run1-adapter+run2-adapter", "group01_run3-adapter", "plan.json"]  # folders, never subfolders
    single = load_adapter(tmp_path / "out" / data["groups"][1]["path"])
    assert single.sha256 == inputs[2].sha256  # the singleton is input 2 itself, found by index
    merged = load_adapter(tmp_path / "out" / data["groups"][0]["path"])
    assert min(evaluate(merged.modules, ["run1/adapter", "run2/adapter"]).values()) >= 0.9
    # loaded by hand (both named "adapter"), the planner applies the same naming rule instead of refusing
    raw = [load_adapter(p) for p in same_leaf]
    assert [a.name for a in raw] == ["adapter"] * 3
    assert Planner(0.9, max_trials=2).plan(raw).tasks == ["run1/adapter", "run2/adapter", "run3/adapter"]


def test_plan_cli_names_inputs_like_merge_and_logs_predictions(same_leaf, tmp_path, capsys):
    from analysis.cli import main

    assert main(["plan", *map(str, same_leaf[:2]), "--weights-only", "--out", str(tmp_path / "p"), "--min-retention", "0.5"]) == 0
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.startswith("plan: group ")]
    assert lines and all("predicted run1/adapter 0." in x or "predicted run1/adapter 1." in x for x in lines)
    assert all(" (worst " in x and ("-> accepted" in x or "-> refused" in x) for x in lines)
    data = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert data["tasks"] == ["run1/adapter", "run2/adapter"]
    assert "2 adapters ->" in captured.out
