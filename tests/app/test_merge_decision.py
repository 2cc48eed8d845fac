"""The Merge page's path to a decision in AppTest: compare -> measure (a tiny model that the fixture adapters fit,
data named like the adapters, the shipped general text) -> the decision table -> a proposal that freezes it.

Two routes to the same cells: the page's table, and the library's decision table of the measured blocks the
server holds; the proposal's frozen table equals the page's rows of the method it exports.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.app_env import NAMES, PAGE_SET, page_app
from helpers.model_folders import page_base_folder, page_task_folder
from streamlit.testing.v1 import AppTest

from analysis.adapters.safe_text import markdown_text
from analysis.workflow.decision import RETENTION_HEADER, TEXT_HEADER, Decision, decision_table, retention_rows


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    at = page_app(monkeypatch, timeout=900, ADAPTER_ATLAS_DB=str(tmp_path / "review.db"), OMP_NUM_THREADS="1")
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", os.pathsep.join([str(PAGE_SET), str(tmp_path)]))
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _table(at: AppTest, header: tuple[str, ...]):
    return next(d.value for d in at.dataframe if list(d.value.columns) == list(header))


def test_measure_decide_and_the_proposal_freezes_the_table(app: AppTest, tmp_path: Path) -> None:
    model, data = page_base_folder(tmp_path), page_task_folder(tmp_path, NAMES)
    at = app.run().switch_page("app_pages/merge.py").run()
    _ok(at)
    at.multiselect(key="merge_methods").set_value(["isolation", "linear"]).run()
    at.selectbox(key="merge_core_unit").select("rows").run()
    at.button(key="merge_compare").click().run()
    _ok(at)
    heads = [h.value for h in at.subheader]
    assert [h.split(" · ")[0] for h in heads[:4]] == ["1", "2", "3", "4"]
    assert "Compare" in heads[1] and "Measure" in heads[2] and "Decide" in heads[3], heads
    assert any("Nothing is measured yet" in w.value for w in at.warning)
    at.radio(key="merge_eval_model_kind").set_value("Model on the server").run()
    at.text_input(key="merge_eval_model").input(str(model)).run()
    at.radio(key="merge_eval_data_kind").set_value("Data on the server").run()
    at.text_area(key="merge_eval_data").input(str(data)).run()
    at.selectbox(key="merge_eval_metric").select("both").run()
    at.number_input(key="merge_limit").set_value(4).run()
    at.number_input(key="merge_bar").set_value(0.8).run()
    _ok(at)
    assert at.multiselect(key="merge_tasks").value == NAMES  # each adapter's own task, by its folder name
    at.button(key="merge_measure").click().run()
    _ok(at)

    from app import cache

    held = {k[1][1]: v for k, v in cache._merge_runs().items() if k[0] == "measured" and k[2:4] == ("peft", None)}
    runs = {k[1].method: v for k, v in cache._merge_runs().items() if k[0] == "run"}
    assert set(held) == {"isolation", "linear"}
    library = decision_table({m: {"measured": b, "tasks": runs[m].evidence["tasks"]} for m, b in held.items()},
                             bar=0.8)  # the preview's tasks carry the predicted retention
    page = _table(at, RETENTION_HEADER)
    assert sorted(page.values.tolist()) == sorted(retention_rows(library))
    assert set(page["bar"]) == {">= 0.8"} and set(page["method"]) == {"isolation", "linear"}
    assert len(page) == 2 * len(NAMES) * 2  # two methods x three tasks x (exact, nll)
    assert all(r.own_adapter == r.task for r in library.rows)  # the own adapter is the one named like the task
    text = _table(at, TEXT_HEADER)
    assert list(text["text task"]) == ["general_text", "general_text"] and list(text["tolerance"]) == ["<= +5%"] * 2
    assert any("Wilson" in c.value for c in at.caption) and any(markdown_text("tiny-page-base", limit=None) in c.value for c in at.caption)

    at.selectbox(key="merge_export_method").select("isolation").run()
    _ok(at)
    assert any("The proposal carries this export's measured table" in s.value
               for s in [*at.success, *at.warning, *at.info])
    at.text_input(key="merge_prop_author").input("ana")
    at.button(key="FormSubmitter:merge_propose_form-Propose this merge").click().run()
    _ok(at)
    assert any("with its measured decision table" in s.value for s in at.success)
    from analysis.review import ReviewStore

    proposal = ReviewStore(os.environ["ADAPTER_ATLAS_DB"]).get(1)
    frozen = Decision.from_dict(proposal.preview["decision"])
    assert frozen.bar == 0.8 and frozen.methods == ("isolation",)
    assert retention_rows(frozen) == [r for r in page.values.tolist() if r[0] == "isolation"]
    assert proposal.preview["measured"] == held["isolation"]
    from analysis.review.escape import md_text
    from analysis.review.report_md import render_markdown

    report = render_markdown(proposal)
    assert md_text(retention_rows(frozen)[0][7]) in report and "general\\_text" in report


def _compared_on_the_server(app: AppTest, tmp_path: Path, method: str, rows: int) -> tuple[AppTest, Path, Path]:
    """The Merge page with `method` compared, its Measure section pointed at a tiny model and task data on the server."""
    model, data = page_base_folder(tmp_path), page_task_folder(tmp_path, NAMES, rows=rows)
    at = app.run().switch_page("app_pages/merge.py").run()
    at.multiselect(key="merge_methods").set_value([method]).run()
    at.button(key="merge_compare").click().run()
    at.radio(key="merge_eval_model_kind").set_value("Model on the server").run()
    at.text_input(key="merge_eval_model").input(str(model)).run()
    at.radio(key="merge_eval_data_kind").set_value("Data on the server").run()
    at.text_area(key="merge_eval_data").input(str(data)).run()
    return at, model, data


def test_a_changed_export_is_measured_before_it_is_proposed(app: AppTest, tmp_path: Path) -> None:
    at, model, data = _compared_on_the_server(app, tmp_path, "ties", rows=2)
    at.selectbox(key="merge_eval_metric").select("nll").run()
    at.toggle(key="merge_general").set_value(False).run()
    at.button(key="merge_measure").click().run()
    _ok(at)
    at.selectbox(key="merge_rank").select("4").run()
    _ok(at)
    assert any("is not the adapter measured" in i.value for i in at.info)
    at.button(key="merge_measure_export").click().run()
    _ok(at)
    from app import cache

    assert any(k[0] == "measured" and k[2:4] == ("peft", 4) for k in cache._merge_runs())
    assert any("The proposal carries this export's measured table" in s.value for s in [*at.success, *at.warning, *at.info])


def test_plan_runs_on_the_current_selection(app: AppTest) -> None:
    """The Plan section plans exactly the adapters chosen above (the planner called directly is the second route)."""
    at = app.run().switch_page("app_pages/merge.py").run()
    at.multiselect(key="merge_methods").set_value(["linear"]).run()
    at.button(key="merge_compare").click().run()
    at.multiselect(key="merge_inputs").set_value(NAMES[:2]).run()
    at.button(key="merge_plan_run").click().run()
    _ok(at)
    from analysis.adapters import load_adapter
    from analysis.plan.planner import Planner

    direct = Planner(0.9).plan([load_adapter(PAGE_SET / n, name=n) for n in NAMES[:2]]).as_dict()
    shown = {m.label: m.value for m in at.metric}
    assert shown["Your selection after planning"] == f"{direct['adapters_out']} of 2"
    groups = next(d.value for d in at.dataframe if "worst predicted retention" in d.value.columns)
    assert list(groups["adapters"]) == [", ".join(g["tasks"]) for g in direct["groups"]]
    at.button(key="merge_plan_cancel").click().run()
    assert any("Planning cancelled" in i.value for i in at.info)


def test_estimate_from_prompts_reaches_the_table_and_the_proposal(app: AppTest, tmp_path: Path) -> None:
    """Estimate from prompts (data-light, no labels read): the page's table equals a second route (the library's
    Forecast on the export the server holds), and a proposal carries the data-light estimate in its tasks."""
    at, model, data = _compared_on_the_server(app, tmp_path, "linear", rows=4)
    at.button(key="merge_estimate").click().run()
    _ok(at)
    page = next(d.value for d in at.dataframe if "data-light estimate" in d.value.columns)
    assert list(page["input"]) == NAMES and set(page["prompts"]) == {4}
    assert any("data-light estimate: the agreement" in c.value for c in at.caption)

    from analysis.evaluation import ModelSpec, load_model, load_prompts
    from analysis.forecast import Forecast
    from app import cache

    key = next(k[1] for k in cache._merge_runs() if k[0] == "run")
    run = cache.merge_export(key, "peft", None)  # the adapter as written: what the page estimated
    second = Forecast(load_model(ModelSpec(str(model))), load_prompts([data])).run(
        run.adapters.adapters, run.written_modules())
    from analysis.predict import estimate_reach
    from analysis.reach import Reach

    loaded = load_model(ModelSpec(str(model)))
    free = [estimate_reach(s, {}) for s in Reach(loaded).signals(run.adapters.adapters, run.written_modules())]
    for (_, row), pred, reach in zip(page.iterrows(), second, free):
        assert pred is not None and row["data-light estimate"] == f"{pred.value:.2f} [{pred.low:.2f}, {pred.high:.2f}]"
        assert row["agreement"] == pytest.approx(pred.computed_on["agreement"])
        # the data-free column beside it: the reach estimate on the same model, a second route through the library
        assert row["data-free basis"] == "data-free (reach)"
        assert row["data-free estimate"] == f"{reach.value:.2f} [{reach.low:.2f}, {reach.high:.2f}]"
    at.text_input(key="merge_prop_author").input("ana")
    at.button(key="FormSubmitter:merge_propose_form-Propose this merge").click().run()
    _ok(at)
    from analysis.review import ReviewStore

    tasks = ReviewStore(os.environ["ADAPTER_ATLAS_DB"]).get(1).preview["tasks"]
    assert [t["predicted_retention"]["basis"] for t in tasks] == ["data-light (outputs)"] * len(NAMES)
    assert [t["predicted_retention"]["value"] for t in tasks] == pytest.approx([p.value for p in second], abs=1e-4)
    assert [t["predicted_retention_data_free"]["basis"] for t in tasks] == ["data-free (reach)"] * len(NAMES)
