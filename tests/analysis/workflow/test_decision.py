"""The decision view: retention with intervals against a bar, predictions beside it, the general-text check,
frozen into a proposal and rendered the same way in both report formats."""
from __future__ import annotations

import json
import math

import pytest
from helpers.evidence import PREDICTED, evidence

from analysis.workflow.decision import (
    Decision,
    decision_table,
    frozen_decision,
    retention_rows,
    summary_line,
    text_rows,
    wilson,
)

RECIPE = {"atlas_recipe": 1, "tool_version": "0.1.0", "method": "isolation", "parameters": {}, "weights": None,
          "export": {"format": "peft", "rank": 8},
          "inputs": [{"name": n, "path": f"/nonexistent/{n}", "sha256": f"{i:064x}", "format": "peft"}
                     for i, n in enumerate(("math_add", "format_date"))]}


def test_wilson_matches_scipy() -> None:
    from scipy.stats import binomtest

    for k, n in [(0, 32), (7, 32), (28, 32), (32, 32), (1, 3), (500, 1000)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_retention_interval_verdict_and_prediction() -> None:
    d = decision_table({"isolation": evidence()}, bar=0.9)
    by = {(r.task, r.metric): r for r in d.rows}
    math_add = by[("math_add", "exact")]
    assert math_add.retention == pytest.approx(28 / 30)  # merged / own
    lo, hi = wilson(28, 32)
    assert (math_add.low, math_add.high) == pytest.approx((lo / (30 / 32), hi / (30 / 32)))
    assert math_add.verdict == "pass" and not math_add.sure  # 0.933 >= 0.9, but the interval reaches below
    assert math_add.predicted == PREDICTED and math_add.own_adapter == "math_add"
    fd = by[("format_date", "exact")]
    assert fd.retention == pytest.approx(7 / 8) and fd.verdict == "fail" and fd.predicted is None
    nll = by[("format_date", "nll")]
    assert nll.retention == pytest.approx((3.0 - 1.5) / (3.0 - 1.0)) and nll.low is None  # share of the gain kept
    assert nll.verdict == "fail" and nll.sure
    assert [t.task for t in d.text] == ["general"] and ("general", "nll") not in by
    assert d.text[0].change == pytest.approx(0.05) and d.text[0].verdict == "pass"  # 2.1 vs 2.0: +5% <= 5%
    assert decision_table({"m": evidence()}, tolerance=0.04).text[0].verdict == "fail"
    assert d.passed("isolation") is False
    assert decision_table({"m": evidence()}, bar=0.5).passed() is True
    assert summary_line(d).startswith("1 of 3 measured task × metric row(s) keep >= 0.9")


def test_undefined_retention_is_named_not_a_verdict() -> None:
    ev = evidence()
    ev["measured"]["rows"][0]["inputs"][0]["value"] = 0.0  # the own adapter scores 0
    ev["measured"]["rows"][2]["inputs"][1]["value"] = 3.5  # NLL worse than the base: nothing to keep
    d = decision_table({"m": ev})
    by = {(r.task, r.metric): r for r in d.rows}
    assert by[("math_add", "exact")].retention is None and by[("math_add", "exact")].verdict == "undefined"
    assert "scores 0" in by[("math_add", "exact")].note
    assert by[("format_date", "nll")].verdict == "undefined"
    assert "1 of 2 measured task(s)" not in summary_line(d) and "without a defined retention" in summary_line(d)


def test_older_records_find_the_own_adapter_by_name() -> None:
    old = evidence(own_field=False)  # measured before `own` was recorded: the input named like the task
    new = evidence()
    assert [r.retention for r in decision_table({"m": old}).rows] == [r.retention for r in decision_table({"m": new}).rows]


def test_rendered_cells_and_frozen_round_trip() -> None:
    d = decision_table({"isolation": evidence(), "ties": evidence("ties", predicted=False)}, bar=0.9)
    cells = retention_rows(d)
    assert cells[0][:3] == ["isolation", "math_add", "exact"]
    assert cells[0][7] == f"{28 / 30:.3f} [{wilson(28, 32)[0] / (30 / 32):.3f}, {wilson(28, 32)[1] / (30 / 32):.3f}]"
    assert cells[0][8] == "0.800 [0.600, 0.950]" and cells[0][-1] == "PASS (unsure)"
    ties = [c for c in cells if c[0] == "ties"]
    assert all(c[8] == "no estimate" for c in ties)
    assert text_rows(d)[0][5] == "+5.0%"
    again = Decision.from_dict(json.loads(json.dumps(d.to_dict())))
    assert again == d
    frozen = {**evidence(), "decision": decision_table({"isolation": evidence()}, bar=0.95).to_dict()}
    got, was_frozen = frozen_decision(frozen)
    assert was_frozen and got is not None and got.bar == 0.95
    built, was_frozen = frozen_decision(evidence())
    assert not was_frozen and built is not None and built.bar == 0.9
    assert frozen_decision({"tasks": []}) == (None, False)
    assert not math.isnan(d.rows[0].retention or 0)


def test_both_report_formats_show_the_table_before_the_decision(tmp_path) -> None:
    from analysis.review import ReviewStore, propose
    from analysis.review.report_html import render_html
    from analysis.review.report_md import render_markdown

    frozen = {**evidence(), "decision": decision_table({"isolation": evidence()}, bar=0.9).to_dict()}
    with ReviewStore(tmp_path / "r.db") as store:
        pid = propose(store, RECIPE, "t", "ann", preview=frozen)
        p = store.get(pid)
    from analysis.review.evidence import InputOverlap

    none = InputOverlap(False, "not here")
    html, md = render_html(p, none), render_markdown(p, none)
    expected = retention_rows(Decision.from_dict(frozen["decision"]))[0][7]
    from analysis.review.escape import html_text, md_text

    for text, esc in ((html, html_text), (md, md_text)):
        assert esc(expected) in text and esc("0.800 [0.600, 0.950]") in text and "no estimate" in text
        assert "Wilson" in text and "SmolLM2" in text and esc("/d/general.jsonl") in text
    assert html.index("Measured against the bar") < html.index("<h2>Decision</h2>")
    assert md.index("Measured against the bar") < md.index("**Decision:**")
    assert "class='ok'><b>PASS (unsure)" in html and "class='bad'><b>FAIL" in html
