"""run_merge end to end: automatic rank meets its fidelity, PEFT loads what was written, progress and cancel,
evidence round trip through the review store, weights refused at the boundary."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from workflow_factories import peft_adapter, peft_delta_weights

from analysis.errors import AtlasError, RecipeError
from analysis.merge.ops import truncate
from analysis.workflow import (
    AdapterSet,
    Cancelled,
    CoreChoice,
    CoreSettings,
    ExportSpec,
    ProgressReporter,
    preview_from_recipe,
    reexport,
    run_merge,
)
from analysis.workflow.evidence import task_table


@pytest.fixture(scope="module")
def trio(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("trio")
    return AdapterSet.from_paths([peft_adapter(tmp, n, seed=s).path for n, s in (("a", 1), ("b", 2), ("c", 3))])


def _rel_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    num = sum(float(((got[m] - want[m]) ** 2).sum()) for m in want)
    return math.sqrt(num / sum(float((w**2).sum()) for w in want.values()))


def test_auto_rank_is_the_smallest_reaching_the_target_and_peft_loads_it(trio, tmp_path: Path) -> None:  # noqa: ANN001
    run = run_merge(trio, "ties", export=ExportSpec(target_error=0.3))
    ex = run.evidence["export"]
    assert ex["rank_mode"] == "auto" and ex["reached"] and ex["rank"] < ex["cap"] == 12
    rank = ex["rank"]
    assert run.fidelity(rank)["relative_error"] <= 0.3 < run.fidelity(rank - 1)["relative_error"]
    out = run.write(tmp_path / "ties")
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["export"] == {"format": "peft", "rank": rank, "rank_mode": "auto", "target_error": 0.3,
                                "extras": "carry"}
    # PEFT's get_delta_weight of the export vs our rank-R truncation vs the exact (dense) merge
    loaded = peft_delta_weights(out)
    from analysis.merge import merge_adapters

    exact = {m: d.dense(torch.float64) for m, d in merge_adapters(list(trio.adapters), "ties").modules.items()}
    ours = {m: truncate(d, rank).dense(torch.float64) for m, d in run.result.modules.items()}
    assert set(loaded) == set(exact)
    for m in exact:
        torch.testing.assert_close(loaded[m], ours[m], rtol=1e-4, atol=1e-5)
    assert _rel_error(loaded, exact) == pytest.approx(ex["relative_error"], rel=1e-4)


def test_fixed_rank_overrides_and_reexport_reuses_the_merge(trio) -> None:  # noqa: ANN001
    run = run_merge(trio, "ties", export=ExportSpec(rank=3))
    assert run.evidence["export"]["rank_mode"] == "fixed" and run.rank == 3
    again = reexport(run, ExportSpec(rank=5))
    assert again.result is run.result and again.rank == 5
    assert again.evidence["export"]["relative_error"] == pytest.approx(run.fidelity(5)["relative_error"])
    exact = run_merge(trio, "linear")
    assert exact.evidence["export"]["rank_mode"] == "exact" and exact.rank is None
    assert exact.fidelity(None)["relative_error"] == 0.0 and exact.fidelity(2)["relative_error"] > 0.0


def test_preview_uses_the_methods_own_cores(trio) -> None:  # noqa: ANN001
    run = run_merge(trio, "isolation", {"granularity": "rows", "p": 0.25})
    assert run.evidence["settings"]["granularity"] == "rows" and run.evidence["settings"]["p"] == 0.25
    other = run_merge(trio, "linear", preview=CoreChoice(CoreSettings("columns", 0.5)))
    assert other.evidence["settings"]["granularity"] == "columns" and other.evidence["settings"]["p"] == 0.5


def test_progress_reports_eta_and_a_raising_callback_cancels(trio, tmp_path: Path) -> None:  # noqa: ANN001
    seen = []
    t = iter(range(10_000))
    run_merge(trio, "linear", progress=ProgressReporter(lambda *a: seen.append(a), clock=lambda: float(next(t))))
    stages = [s for s, *_ in seen]
    assert {"merge", "export rank", "preview", "done"} <= set(stages)
    merge_steps = [a for a in seen if a[0] == "merge" and 0 < a[1] < a[2]]
    assert merge_steps and all(eta is not None and eta > 0 for _, _, _, eta, _ in merge_steps)

    def stop(stage: str, done: int, total: int, eta: float | None, label: str) -> None:
        if stage == "preview" and done > 0:
            raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        run_merge(trio, "linear", progress=ProgressReporter(stop))
    assert issubclass(Cancelled, AtlasError)
    flag = {"stop": True}
    with pytest.raises(Cancelled):
        run_merge(trio, "linear", progress=ProgressReporter(cancel_requested=lambda: flag["stop"]))


@pytest.mark.parametrize("weights, needle", [((0, 0, 0), "every weight is 0"), ((1, math.inf, 1), "weight 2 is inf"),
                                             ((1, math.nan, 1), "weight 2 is nan"), ((1, 1), "2 weights given")])
def test_bad_weights_are_refused(trio, weights, needle) -> None:  # noqa: ANN001
    with pytest.raises(RecipeError, match=needle):
        run_merge(trio, "linear", weights=weights)


def test_weight_zero_on_one_input_is_allowed(trio) -> None:  # noqa: ANN001
    run = run_merge(trio, "linear", weights=(1, 0, 1))
    assert run.result.weights == [1.0, 0.0, 1.0]


def test_weight_zero_inputs_do_not_widen_the_rank_cap(trio) -> None:  # noqa: ANN001
    """The cap is the summed rank of the inputs that contribute: 3 x rank 4 is 12, with one at weight 0 it is 8."""
    assert run_merge(trio, "ties").evidence["export"]["cap"] == 12
    run = run_merge(trio, "ties", weights=(1, 0, 1))
    assert run.evidence["export"]["cap"] == 8 and run.rank <= 8
    assert reexport(run, ExportSpec(rank=2)).spectrum.cap == 8  # a re-export keeps the cap of the contributors


def test_evidence_round_trip_through_the_review_store(trio, tmp_path: Path) -> None:  # noqa: ANN001
    from analysis.review import ReviewStore
    from analysis.review.evidence import preview_tasks
    from analysis.review.propose import propose_merge
    from analysis.review.report_md import render_markdown

    run = run_merge(trio, "ties")
    store = ReviewStore(str(tmp_path / "review.db"))
    pid = propose_merge(store, run, "ties of a, b, c", "ana")
    proposal = store.get(pid)
    assert proposal.preview["evidence_version"] == 2
    assert preview_tasks(proposal.preview) == task_table(run.evidence)
    names, metrics, rows = preview_tasks(proposal.preview)
    assert names == ["a", "b", "c"] and metrics[:4] == ["core_retention", "interference", "cosine", "conflicts"]
    assert rows[1][1] == run.evidence["tasks"][1]["interference"]
    report = render_markdown(proposal)
    from analysis.review.escape import md_text
    from analysis.workflow.evidence import export_line

    assert f"relative Frobenius error {run.evidence['export']['relative_error']:.4f}" in export_line(run.evidence)
    assert md_text(export_line(run.evidence)) in report
    assert f"| b | {rows[1][0]:.4g} | {rows[1][1]:.4g} |" in report


def test_old_evidence_shapes_still_read() -> None:
    v1 = {"tasks": {"a": {"core_retention": 0.5, "interference": 0.25}}}
    page = {"per_task": {"a": {"core_retention": 0.5, "interference": 0.25, "cosine": None}}}
    assert task_table(v1) == (["a"], ["core_retention", "interference"], [[0.5, 0.25]])
    assert task_table(page) == (["a"], ["core_retention", "interference", "cosine"], [[0.5, 0.25, None]])
    assert task_table(None) == ([], [], []) and task_table({"tasks": "junk"}) == ([], [], [])


def test_delta_export_of_a_refactored_merge_merges_again_exactly(trio) -> None:  # noqa: ANN001
    from analysis.merge import merge_adapters

    run = run_merge(trio, "ties")
    assert run.refactored == 12
    delta = reexport(run, ExportSpec(format="delta"), preview=False)
    exact = merge_adapters(list(trio.adapters), "ties").modules
    assert delta.refactored is None and delta.evidence["export"]["rank_mode"] == "exact"
    for m, d in exact.items():
        torch.testing.assert_close(delta.result.modules[m].dense(torch.float64), d.dense(torch.float64))


def test_preview_cores_chosen_by_a_face_are_recorded_and_replayed(trio) -> None:  # noqa: ANN001
    """The app previews ties with its own core controls (rows, p=0.05): the recipe records them, so a replay
    from the recipe alone (what `adapter-atlas merge --recipe` does) gives the same preview; a run without
    them records nothing (older recipes stay byte-stable)."""
    from analysis.export import recipe_to_yaml
    from analysis.export.recipe import parse_recipe

    app = run_merge(trio, "ties", preview=CoreChoice(CoreSettings("rows", 0.05)))
    assert app.recipe.export.preview is not None and app.recipe.export.preview.granularity == "rows"
    replay_recipe = parse_recipe(yaml.safe_load(recipe_to_yaml(app.recipe)), "recipe")
    replay = run_merge(trio, replay_recipe.method, replay_recipe.parameters, replay_recipe.weights,
                       ExportSpec.from_recipe(replay_recipe), preview=preview_from_recipe(replay_recipe))
    assert replay.evidence["tasks"] == app.evidence["tasks"]
    assert recipe_to_yaml(replay.recipe) == recipe_to_yaml(app.recipe)
    plain = run_merge(trio, "ties")
    assert plain.evidence["tasks"] != app.evidence["tasks"]  # the settings matter, so recording them matters
    assert "preview" not in recipe_to_yaml(plain.recipe)
    iso = run_merge(trio, "isolation", {"granularity": "rows", "p": 0.05}, preview=CoreChoice(CoreSettings("rows", 0.05)))
    assert iso.recipe.export.preview is None  # isolation's own parameters already say which cores


def test_written_modules_are_what_peft_loads_not_the_merge_kept_at_the_cap(trio, tmp_path: Path) -> None:  # noqa: ANN001
    """The page's accuracy row evaluates `written_modules()`: it must be the adapter PEFT loads from the export."""
    run = run_merge(trio, "ties", export=ExportSpec(rank=3))
    loaded = peft_delta_weights(run.write(tmp_path / "w"))
    written = run.written_modules()
    assert set(loaded) == set(written) == set(run.result.modules)
    for m in loaded:
        torch.testing.assert_close(loaded[m], written[m].dense(torch.float64), rtol=1e-4, atol=1e-5)
    assert all(written[m].rank == 3 for m in written) and max(d.rank for d in run.result.modules.values()) > 3
    assert run.max_rank == max(min(d.shape) for d in run.result.modules.values()) >= run.spectrum.cap
    exact = run_merge(trio, "linear")
    assert exact.rank is None and exact.written_modules() == dict(exact.result.modules)


def test_weight_zero_cores_add_no_conflicts_to_the_others(trio) -> None:  # noqa: ANN001
    """Task 1's conflicts with task 3 at weight 0 equal those of the merge of tasks 1 and 2 alone (two routes)."""
    zero = run_merge(trio, "linear", weights=(1, 1, 0), preview=CoreChoice(CoreSettings("entries", 0.05)))
    pair = run_merge(AdapterSet(trio.adapters[:2]), "linear", weights=(1, 1), preview=CoreChoice(CoreSettings("entries", 0.05)))
    assert [t["conflicts"] for t in zero.evidence["tasks"][:2]] == [t["conflicts"] for t in pair.evidence["tasks"]]
    assert len(zero.evidence["tasks"]) == 3  # the weight-0 input keeps its row
    full = run_merge(trio, "linear", weights=(1, 1, 1), preview=CoreChoice(CoreSettings("entries", 0.05)))
    assert full.evidence["tasks"][0]["conflicts"] > zero.evidence["tasks"][0]["conflicts"]


def test_a_fixed_rank_isolation_preview_made_while_merging_equals_the_one_made_after(
        trio, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The fused preview (claims handed over by the merge) against the preview computed afterwards."""
    import analysis.workflow.pipeline as pipeline
    from analysis.preview import module_rows

    calls = []
    real_rows = module_rows

    def counting(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(k.get("runs") is not None)
        return real_rows(*a, **k)

    import analysis.preview as preview_mod

    monkeypatch.setattr(preview_mod, "module_rows", counting)
    fused = run_merge(trio, "isolation", params={"p": 0.05}, export=ExportSpec(rank=3))
    n_modules = len(fused.result.modules)
    assert calls.count(True) == n_modules and calls.count(False) == 0  # every module previewed while merging
    calls.clear()
    monkeypatch.setattr(pipeline, "_fused_preview", lambda *a, **k: None)
    after = run_merge(trio, "isolation", params={"p": 0.05}, export=ExportSpec(rank=3))
    assert calls.count(False) == n_modules
    assert json.dumps(fused.evidence, sort_keys=True) == json.dumps(after.evidence, sort_keys=True)
    # an input of weight 0, or an automatic rank: no fusion (the claims or the rank would differ)
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setattr(preview_mod, "module_rows", counting)
    run_merge(trio, "isolation", weights=[1.0, 0.0, 1.0], params={"p": 0.05}, export=ExportSpec(rank=3))
    assert calls == [False] * n_modules  # every module previewed, none of them while merging
    calls.clear()
    run_merge(trio, "isolation", params={"p": 0.05})
    assert calls == [False] * n_modules


def test_run_merge_leaves_torch_threads_to_the_caller(trio, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A library call changes no global state: the faces (or `analysis.threads.bounded_threads`) set threads."""
    set_calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_calls.append)
    run = run_merge(trio, "ties", export=ExportSpec(rank=3))
    reexport(run, ExportSpec(rank=2))
    assert set_calls == [] and run.evidence["tasks"]


def test_the_estimate_shows_its_value_in_the_preview_table() -> None:
    v2 = {"tasks": [{"index": 0, "name": "a", "core_retention": 0.5,
                     "predicted_retention": {"value": 0.8, "low": 0.6, "high": 1.0, "basis": "data-free"}},
                    {"index": 1, "name": "b", "core_retention": 0.4, "predicted_retention": None}]}
    assert task_table(v2) == (["a", "b"], ["core_retention", "predicted_retention"], [[0.5, 0.8], [0.4, None]])
