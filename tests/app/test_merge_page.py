"""The Merge page in Streamlit's AppTest on the committed fixture trio (tests/helpers/app_env.py).

One merge, three faces: the numbers the page shows, what `adapter-atlas merge` prints for the same merge,
and the review report of the proposal the page opens must be the same numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.app_env import NAMES, PAGE_SET, REPO, page_app
from streamlit.testing.v1 import AppTest


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    return page_app(monkeypatch, timeout=900, ADAPTER_ATLAS_DB=str(tmp_path / "review.db"), OMP_NUM_THREADS="1")


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _compare(at: AppTest, methods: list[str]) -> AppTest:
    at = at.run().switch_page("app_pages/merge.py").run()
    _ok(at)
    at.multiselect(key="merge_methods").set_value(methods).run()
    at.selectbox(key="merge_core_unit").select("rows").run()
    at.button(key="merge_compare").click().run()
    _ok(at)
    return at


def test_page_cli_and_review_report_show_the_same_numbers(app: AppTest, tmp_path: Path) -> None:
    at = _compare(app, ["isolation", "linear"])
    table = at.dataframe[0].value
    assert set(table["method"]) == {"isolation", "linear"} and list(table["task"][:3]) == NAMES
    assert not table.isna().any().any() and "None" not in table.astype(str).values
    page = {row["task"]: row for _, row in table[table["method"] == "isolation"].iterrows()}
    # the CLI on the same inputs and settings
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "analysis.cli", "merge", *(str(PAGE_SET / n) for n in NAMES),
                          "--method", "isolation", "--param", "granularity=rows", "--out", str(tmp_path / "cli"),
                          "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    cli = json.loads(res.stdout)
    assert [t["name"] for t in cli["tasks"]] == NAMES
    for t in cli["tasks"]:
        assert page[t["name"]]["interference"] == pytest.approx(t["interference"], rel=1e-12)
        assert page[t["name"]]["core kept"] == pytest.approx(t["core_retention"], rel=1e-12)
        assert page[t["name"]]["conflicts"] == t["conflicts"]
    assert page[NAMES[0]]["export error"] == pytest.approx(cli["export"]["relative_error"], rel=1e-12)
    # the page's proposal, rendered as a review report, carries the same evidence
    at.selectbox(key="merge_export_method").select("isolation").run()
    at.button(key="merge_build").click().run()
    _ok(at)
    assert any(b.proto.label == "Download export (zip)" for b in at.get("download_button"))
    assert sum(c.value.startswith("export: ") for c in at.caption) == 1  # the export summary prints once
    at.text_input(key="merge_prop_author").input("ana")
    at.button(key="FormSubmitter:merge_propose_form-Propose this merge").click().run()
    _ok(at)
    assert any("Proposal #1" in s.value for s in at.success)
    from analysis.review import ReviewStore
    from analysis.review.evidence import preview_tasks
    from analysis.review.report_md import render_markdown

    proposal = ReviewStore(os.environ["ADAPTER_ATLAS_DB"]).get(1)
    tasks, metrics, rows = preview_tasks(proposal.preview)
    assert tasks == NAMES
    stored = dict(zip(tasks, rows))
    for t in cli["tasks"]:
        assert stored[t["name"]][metrics.index("interference")] == pytest.approx(t["interference"], rel=1e-12)
    report = render_markdown(proposal)
    cli_line = next(t for t in cli["tasks"] if t["name"] == NAMES[0])
    assert f"| {NAMES[0]} | {cli_line['core_retention']:.4g} | {cli_line['interference']:.4g} |" in report
    from analysis.review.escape import md_text
    from analysis.workflow.evidence import export_line

    assert export_line(proposal.preview) == export_line(cli)
    assert md_text(export_line(cli)) in report
    assert proposal.preview["evidence_version"] == 2


def test_export_rank_change_reads_fidelity_without_recomputing(app: AppTest) -> None:
    at = _compare(app, ["ties"])
    from app import cache

    runs = [k for k in cache._merge_runs() if k[0] == "run"]
    at.selectbox(key="merge_rank").select("4").run()
    _ok(at)
    assert [k for k in cache._merge_runs() if k[0] == "run"] == runs  # no new merge, no new preview
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rank written"] == "4"
    run = next(cache._merge_runs()[k] for k in runs if k[1].method == "ties")
    assert float(metrics["Relative error"]) == pytest.approx(run.fidelity(4)["relative_error"], abs=1e-4)
    assert not any("--rank" in str(el.value) for el in [*at.caption, *at.warning, *at.info])


def test_deselect_reselect_keeps_the_merge_order_in_labels(app: AppTest) -> None:
    at = _compare(app, ["isolation"])
    at.multiselect(key="merge_inputs").unselect(NAMES[0]).run()
    at.multiselect(key="merge_inputs").select(NAMES[0]).run()  # now last in click order
    _ok(at)
    assert at.session_state["merge_inputs"][-1] == NAMES[0]
    assert any(c.value.startswith(f"Merged in this order: 1. {NAMES[0]}") for c in at.caption)
    table = at.dataframe[0].value
    assert list(table["task"]) == NAMES
    jaccard = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    heat = next(f for f in jaccard if "Jaccard" in json.dumps(f["layout"].get("title", "")))
    assert heat["data"][0]["x"] == NAMES and heat["data"][0]["y"] == NAMES
    at.button(key="merge_cancel").click().run()  # Cancel: Streamlit stops a running script; nothing is shown
    _ok(at)
    assert any("cancelled" in i.value for i in at.info) and not at.dataframe


def test_page_starts_small_on_the_sample_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import numpy as np

    from analysis.overlap import aggregate, overlap_table
    from analysis.workflow import AdapterSet, most_overlapping

    sample = sorted(p for p in (REPO / "sample_adapters").iterdir() if (p / "adapter_config.json").is_file())
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(map(str, sample)))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(REPO / "sample_adapters"))
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=600)
    at = at.run().switch_page("app_pages/merge.py").run()
    _ok(at)
    adapters = AdapterSet.from_paths(sample)
    sim = np.asarray(aggregate(overlap_table(list(adapters.adapters)), "subspace_similarity"))
    expected = [adapters.names[i] for i in most_overlapping(sim, 3)]
    assert at.multiselect(key="merge_inputs").value == expected
    assert at.multiselect(key="merge_methods").value == ["isolation", "linear", "ties"]
    lines = [m.value for m in at.markdown if m.value.startswith("- **")]
    assert len(lines) == 3 and all(": " in line and len(line.splitlines()) == 1 for line in lines)
    from analysis.merge.registry import get_method

    iso = get_method("isolation")  # the shared core controls start at the isolation method's declared defaults
    assert at.selectbox(key="merge_core_unit").value == iso.param("granularity").default
    assert at.number_input(key="merge_core_p").value == pytest.approx(float(iso.param("p").default))
    assert not any(k.startswith("merge_isolation_") and k.endswith(("_p", "_granularity")) for k in at.session_state)


def test_weight_zero_input_drop_extras_and_the_proposal_author(app: AppTest) -> None:
    """A weight-0 input is in no isolation group (the Groups metric counts only real groups); Drop extras is part
    of the merge key; the proposal's author is the name the Review page signs with."""
    at = app.run().switch_page("app_pages/merge.py").run()
    _ok(at)
    at.multiselect(key="merge_methods").set_value(["isolation"]).run()
    at.selectbox(key="merge_core_unit").select("rows").run()
    at.toggle(key="merge_custom_weights").set_value(True).run()
    at.number_input(key=f"merge_w_{NAMES[2]}").set_value(0.0).run()
    at.toggle(key="merge_drop_extras").set_value(True).run()
    at.button(key="merge_compare").click().run()
    _ok(at)
    from app import cache
    from app.components import view

    keys = [k[1] for k in cache._merge_runs() if k[0] == "run" and k[1].method == "isolation"]
    key = next(k for k in keys if k.weights == (1.0, 1.0, 0.0) and k.extras == "drop")  # the toggle: a new merge
    groups = cache._merge_runs()[("run", key)].evidence["method_info"]["groups"]
    assert groups[2] == -1
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Groups"]) == len({g for g in groups if g != -1}) == len(set(groups)) - 1
    run = cache._merge_runs()[("run", key)]
    assert run.evidence["export"]["cap"] == sum(max(d.rank for d in a.modules.values()) for a in run.adapters[:2])
    at.selectbox(key="merge_export_method").select("isolation").run()
    at.button(key="merge_build").click().run()
    _ok(at)
    at.text_input(key="merge_prop_author").input("  bea ")
    at.button(key="FormSubmitter:merge_propose_form-Propose this merge").click().run()
    _ok(at)
    assert any("Proposal #" in s.value for s in at.success)
    assert at.session_state[view.AUTHOR] == "bea"


def test_a_handed_over_set_arrives_whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Population (or Adapters) replaces the open set with five adapters: Merge selects all five, not the three that
    overlap most (that start is for the server's default set only); a second hand-off replaces the selection
    and names what is no longer open."""
    from app.components import view

    sample = sorted(p for p in (REPO / "sample_adapters").iterdir() if (p / "adapter_config.json").is_file())
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(map(str, sample)))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(REPO / "sample_adapters"))
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=600)
    at.session_state[view.ADAPTERS] = [str(p) for p in sample[:5]]  # what view.add_adapters(replace=True) leaves
    at = at.run().switch_page("app_pages/merge.py").run()
    _ok(at)
    assert at.multiselect(key="merge_inputs").value == [p.name for p in sample[:5]]
    at.session_state[view.ADAPTERS] = [str(p) for p in sample[3:7]]  # a second hand-off
    at = at.run()
    _ok(at)
    assert at.multiselect(key="merge_inputs").value == [p.name for p in sample[3:7]]
    note = next(c.value for c in at.caption if c.value.startswith("The open set changed"))
    assert all(p.name in note for p in sample[:3]) and sample[4].name not in note.split("dropped:")[-1]


def test_a_link_restores_the_results_the_server_holds(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Merge link opened in a fresh session shows the comparison the server still holds, not only the form."""
    at = _compare(app, ["linear"])
    link = {k: at.query_params[k] for k in at.query_params}
    fresh = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=600)
    for k, v in link.items():
        fresh.query_params[k] = v
    fresh = fresh.run().switch_page("app_pages/merge.py").run()
    _ok(fresh)
    assert fresh.dataframe and list(fresh.dataframe[0].value["method"].unique()) == ["linear"]
    assert not any("press **Compare methods**" in i.value for i in fresh.info)
