"""The Merge page in Streamlit's AppTest on the gemma-3-270m trio: numbers on screen vs the library."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers.app_env import GEMMA, NAMES, gemma_app, needs_gemma
from streamlit.testing.v1 import AppTest

from analysis.adapters import load_adapter
from analysis.merge import merge_adapters
from analysis.preview import preview_merge

pytestmark = needs_gemma


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    return gemma_app(monkeypatch, timeout=600, ADAPTER_ATLAS_DB=str(tmp_path / "review.db"), OMP_NUM_THREADS="1")


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_merge_page_compares_methods_and_exports(app: AppTest) -> None:
    at = app.run().switch_page("app_pages/merge.py").run()
    _ok(at)
    at.multiselect(key="merge_methods").set_value(["isolation", "linear"]).run()
    at.selectbox(key="merge_isolation_granularity").select("rows").run()
    at.selectbox(key="merge_core_unit").select("rows").run()
    at.button(key="merge_compare").click().run()
    _ok(at)
    table = at.dataframe[0].value
    assert set(table["method"]) == {"isolation", "linear"} and set(table["task"]) == set(NAMES)
    # second route: the library called directly with the same settings
    adapters = [load_adapter(GEMMA / n, name=n) for n in NAMES]
    res = merge_adapters(adapters, "isolation", params={"granularity": "rows"})
    expect = preview_merge(adapters, res.modules, granularity="rows", p=0.01)["per_task"]
    for _, row in table[table["method"] == "isolation"].iterrows():
        assert row["interference"] == pytest.approx(expect[row["task"]]["interference"], rel=1e-9)
        assert row["core retention"] == pytest.approx(expect[row["task"]]["core_retention"], rel=1e-9)
        assert row["conflicts"] == expect[row["task"]]["conflicts"]
    assert any(m.label == "Groups" for m in at.metric)
    # export the isolation merge (rows: exactly low rank, no rank needed)
    at.selectbox(key="merge_export_method").select("isolation").run()
    at.button(key="merge_build").click().run()
    _ok(at)
    zipped = next(b for b in at.get("download_button") if b.proto.label == "Download export (zip)")
    assert zipped is not None
    at.text_input(key="merge_prop_author").input("ana")
    at.button(key="FormSubmitter:merge_propose_form-Propose this merge").click().run()
    _ok(at)
    assert any("Proposal #1" in s.value for s in at.success)


def test_dense_method_asks_for_a_rank(app: AppTest) -> None:
    at = app.run().switch_page("app_pages/merge.py").run()
    at.multiselect(key="merge_methods").set_value(["ties"]).run()
    at.selectbox(key="merge_core_unit").select("rows").run()
    at.button(key="merge_compare").click().run()
    _ok(at)
    assert any("set an export rank" in w.value for w in at.warning)
