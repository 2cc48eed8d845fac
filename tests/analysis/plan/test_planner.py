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
