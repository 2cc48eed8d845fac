"""The app's plan section helpers on a plan.json-shaped record: group labels, one row per group, the table."""
from __future__ import annotations

from app.components.plan_view import consolidation_rows, group_labels, group_rows

PLAN = {"min_retention": 0.9, "tasks": ["a", "b", "c"], "adapters_in": 3, "adapters_out": 2, "measured": True,
        "groups": [{"tasks": ["a", "c"], "method": "isolation", "parameters": {"p": 0.1},
                    "predicted": {"a": 0.5, "c": 0.4}, "measured": {"a": 0.95, "c": 1.0}, "path": "group00_a+c"},
                   {"tasks": ["b"], "method": "none", "parameters": {}, "predicted": {"b": 1.0},
                    "measured": {"b": 1.0}, "path": "group01_b"}],
        "linkage": [[0, 2, 0.01, 2], [1, 3, 0.02, 3]]}


def test_group_labels_follow_the_task_order():
    assert group_labels(PLAN) == [0, 1, 0]


def test_one_row_per_group_with_worst_retention():
    df = group_rows(PLAN)
    assert list(df["tasks"]) == ["a, c", "b"]
    assert list(df["worst measured"]) == [0.95, 1.0] and list(df["worst predicted"]) == [0.4, 1.0]


def test_consolidation_table_has_every_task_column():
    res = {"runs": {"multitask": {"mean_retention": 0.5, "min_retention": 0.1, "seconds": {"train": 10},
                                  "export_rank": 16, "retention": {"a": 0.1, "b": 0.9}}}}
    df = consolidation_rows(res)
    assert df.loc[0, "strategy"] == "multitask" and df.loc[0, "a"] == 0.1 and df.loc[0, "b"] == 0.9


def test_section_renders_plan_and_table_from_a_results_file(tmp_path):
    import json

    from streamlit.testing.v1 import AppTest

    res = {"settings": {"steps": 2, "batch_size": 8, "rank": 16, "limit": 4},
           "runs": {"multitask": {"mean_retention": 0.5, "min_retention": 0.1, "seconds": {"train": 1},
                                  "export_rank": 16, "retention": {"a": 0.1, "b": 0.9, "c": 0.5}}},
           "plan": PLAN | {"trials": []}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    script = f"""
from pathlib import Path
from app.components import plan_view
plan_view.RESULTS = Path({str(path)!r})
plan_view.render()
"""
    at = AppTest.from_string(script, default_timeout=60).run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["2 of 3"]
    assert [d.value.shape for d in at.dataframe] == [(2, 7), (1, 8)]
    assert any("adapter-atlas consolidate" in c.value for c in at.code)
