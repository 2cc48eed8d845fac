"""What makes a number readable on the analysis pages (AppTest on the fixture trio): the landing page says what the
tool is for and where to go next; Overlap ranks the most colliding pairs and modules per metric with the random-
subspace value beside each (checked against `analysis.collisions` computed directly); Subspaces states the r/d
baseline and names the hot module per metric; Clusters says what a group means for merging."""
from __future__ import annotations

import pytest
from helpers.app_env import NAMES, PAGE_SET, RANK, WIDTH, page_app
from streamlit.testing.v1 import AppTest

from analysis.adapters import load_adapter
from analysis.collisions import ranked_collisions, ranked_pairs
from analysis.overlap import overlap_table


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return page_app(monkeypatch)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_landing_page_says_what_for_and_where_next(app: AppTest) -> None:
    at = app.run()
    _ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert "decide whether, and how, to merge" in text
    links = [el.proto.label for el in at.get("page_link")]
    assert any(label.startswith("Next: Overlap") for label in links) and any("Merge" in label for label in links)
    assert at.button(key="adapters_open_samples").disabled  # the sample set is what is open already


def test_overlap_ranks_collisions_per_metric_against_random_subspaces(app: AppTest) -> None:
    table = overlap_table([load_adapter(PAGE_SET / n, name=n) for n in NAMES])
    at = app.run().switch_page("app_pages/overlap.py").run()
    _ok(at)
    for metric in ("subspace_similarity", "cosine"):
        at.selectbox(key="atlas_metric").set_value(metric).run()
        _ok(at)
        frames = [d.value for d in at.dataframe]
        cells = next(f for f in frames if "random subspaces" in f.columns)
        pairs = next(f for f in frames if list(f.columns)[0] == "pair")
        want = ranked_collisions(table, metric, 10)
        assert list(cells["pair"]) == [f"{c.a} ↔ {c.b}" for c in want]
        assert list(cells["value"]) == pytest.approx([c.value for c in want])
        assert list(pairs["pair"]) == [f"{c.a} ↔ {c.b}" for c in ranked_pairs(table, metric)]
    at.selectbox(key="atlas_metric").set_value("subspace_similarity").run()
    cells = next(d.value for d in at.dataframe if "random subspaces" in d.value.columns)
    widths = {m: t.shape[0] for m, t in table.items()}
    by_token = {m.split("layers.")[-1]: w for m, w in widths.items()}
    for _, row in cells.iterrows():  # r/d with the fixture's rank 4 and each module's output width
        assert row["random subspaces"] == pytest.approx(RANK / by_token[row["module"]])


def test_subspaces_baseline_and_clusters_group_meaning(app: AppTest) -> None:
    at = app.run().switch_page("app_pages/subspaces.py").run()
    _ok(at)
    captions = " ".join(c.value for c in at.caption)
    assert "Baseline: for random r-dimensional subspaces" in captions and "By cosine" in captions
    assert f"d = {WIDTH}" in captions or "d = 32" in captions
    at = at.switch_page("app_pages/clusters.py").run()
    _ok(at)
    assert any("What a group means for merging" in c.value for c in at.caption)
