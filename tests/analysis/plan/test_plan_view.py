"""The app's plan section helpers on a plan.json-shaped record: group labels, one row per group, the table."""
from __future__ import annotations

from app.components.plan_view import consolidation_rows, contrast_rows, group_labels, group_rows

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


RUN = {"nll": {"a": 0.5, "b": 1.5}, "retention": {"a": 0.5, "b": None}, "trainable_parameters": 10,
       "free_parameters": 8, "frozen_positions": 2, "seconds": {"train": 3}}
RESULTS = {"label": "REDUCED run (not the full protocol)",
           "settings": {"tasks": ["a", "b"], "seeds": [0, 1], "steps": 2, "batch_size": 8, "rows": 64, "em_rows": 4},
           "runs": {"isolation": {"0": RUN, "1": RUN | {"nll": {"a": 1.5, "b": 2.5}}}},
           "contrasts": [{"name": "freezing vs not", "a": "isolation", "b": "merge-then-tune", "question": "q",
                          "nll": {"mean": -0.1, "low": -0.25, "high": 0.05}}]}


def test_consolidation_rows_average_over_tasks_and_seeds():
    df = consolidation_rows(RESULTS)
    assert df.loc[0, "arm"] == "isolation" and df.loc[0, "seeds"] == 2
    assert df.loc[0, "mean NLL"] == 1.5 and df.loc[0, "mean retention"] == 0.5 and df.loc[0, "free"] == 8


def test_contrast_rows_show_the_interval():
    df = contrast_rows(RESULTS)
    assert df.iloc[0, 3] == "-0.100 [-0.250, +0.050]" and df.iloc[0, 4] == "-"


def test_section_renders_plan_and_table_from_a_results_file(tmp_path):
    import json

    from streamlit.testing.v1 import AppTest

    path, plan_path = tmp_path / "results.json", tmp_path / "plan.json"
    path.write_text(json.dumps(RESULTS))
    plan_path.write_text(json.dumps({"plan": PLAN | {"trials": []}}))
    script = f"""
from pathlib import Path
from app.components import plan_view
plan_view.RESULTS = Path({str(path)!r})
plan_view.PLAN_RESULTS = Path({str(plan_path)!r})
plan_view.render()
"""
    at = AppTest.from_string(script, default_timeout=60).run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["2 of 3"]
    assert [d.value.shape for d in at.dataframe] == [(2, 7), (1, 5), (1, 8)]
    assert any("adapter-atlas consolidate" in c.value for c in at.code)
    assert any("REDUCED" in w.value for w in at.warning)
