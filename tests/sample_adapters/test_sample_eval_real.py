"""The real evaluator on the real base: agrees with PEFT, restores weights exactly, drives the CLI.

Slow (one shared base model, ~30 s to load); small limits keep each test to seconds of generation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from analysis.adapters import load_adapter
from analysis.evaluation import Evaluator, load_data, load_model
from analysis.evaluation.exact import generate_answers
from analysis.evaluation.fit import applied_deltas

pytestmark = pytest.mark.slow
LIMIT = 8


def evaluate_deltas(model: Any, tok: Any, deltas: Any, tasks: list[str], limit: int) -> dict[str, Any]:
    """The sample base (the same cached model as `model`) through the one Evaluator."""
    loaded = load_model()
    assert loaded.model is model and loaded.tokenizer is tok
    ev = Evaluator(loaded, load_data(None).select(tasks), limit=limit)
    return {t: s.as_dict() for t, s in ev.score(deltas).items()}


def _attn_snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "self_attn" in k or "embed" in k}


def _assert_same(model: Any, snap: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    for k, v in snap.items():
        assert torch.equal(sd[k], v), f"{k} not restored bitwise"


@pytest.mark.parametrize("task", ["text_last_word", "format_date_us"])
def test_evaluator_agrees_with_peft(base: tuple[Any, Any], samples: Path, task: str) -> None:
    from peft import PeftModel

    model, tok = base
    adapter = load_adapter(samples / task)
    ours = evaluate_deltas(model, tok, adapter.modules, [task], limit=LIMIT)[task]
    assert ours["n"] == LIMIT and len(ours["examples"]) == LIMIT
    ours_pred = {e["prompt"]: e["prediction"] for e in ours["examples"]}

    rows = load_data(None).get(task).rows[:LIMIT]
    prompts = [r.prompt for r in rows]
    snap = _attn_snapshot(model)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        with applied_deltas(model, adapter.modules):
            logits_ours = model(**enc).logits[:, -1]  # (b, vocab)
        pm = PeftModel.from_pretrained(model, str(samples / task))
        try:
            pm.eval()
            logits_peft = pm(**enc).logits[:, -1]  # (b, vocab)
            peft_pred = dict(zip(prompts, generate_answers(pm, tok, prompts)))
        finally:
            pm.unload()
    _assert_same(model, snap)
    torch.testing.assert_close(logits_ours, logits_peft, atol=2e-3, rtol=1e-3)
    assert ours_pred == peft_pred
    # and the adapter does its job on these examples (the bar on the full split is >= 0.8)
    assert sum(peft_pred[r.prompt] == r.answer for r in rows) >= LIMIT // 2


def test_weights_restored_bitwise_after_evaluation(base: tuple[Any, Any], samples: Path) -> None:
    model, tok = base
    snap = _attn_snapshot(model)
    adapter = load_adapter(samples / "math_add")
    res = evaluate_deltas(model, tok, adapter.modules, ["math_add", "text_first_word"], limit=4)
    assert set(res) == {"math_add", "text_first_word"}
    _assert_same(model, snap)
    base_only = evaluate_deltas(model, tok, {}, ["math_add"], limit=4)["math_add"]
    assert base_only["n"] == 4  # the untouched base runs too (and nothing leaked into it)
    _assert_same(model, snap)


def test_cli_evaluate_json(base: tuple[Any, Any], samples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from analysis.cli import main

    model, tok = base
    code = main(["evaluate", str(samples / "format_date"), "--base", "--tasks", "format_date,format_date_us",
                 "--limit", "4", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == ["format_date", "format_date_us"]
    assert set(out["results"]) == {"base", "format_date"}
    direct = evaluate_deltas(model, tok, load_adapter(samples / "format_date").modules, ["format_date"], limit=4)
    assert out["results"]["format_date"]["format_date"]["accuracy"] == direct["format_date"]["accuracy"]
    assert out["results"]["format_date"]["format_date"]["n"] == 4


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], samples: Path) -> None:
    from analysis.cli import main

    assert main(["evaluate", str(samples / "no_such_adapter")]) == 2
    assert main(["evaluate", "--base", "--tasks", "math_nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no_such_adapter" in err[0] and "math_nope" in err[1]
