"""The data-light estimate (`analysis.forecast.Forecast`) on a real tiny model: prompts without labels, the agreement
against a second route (greedy generation), and the faces that carry it (`merge --prompts`, `plan --prompts`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from helpers.model_folders import model_folder, task_adapters

from analysis.cli import main
from analysis.errors import EvaluationDataError
from analysis.evaluation import load_data, load_prompts

WORDS = ("abc", "dog", "sun", "tree", "moon", "cat")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("forecast")
    folder = model_folder(root, "llama", seed=3)
    paths = task_adapters(folder, root, ["upper", "reverse"], seed=30)
    for task in ["upper", "reverse"]:
        (root / "prompts" / task).mkdir(parents=True)
        (root / "prompts" / task / "eval.jsonl").write_text(
            "".join(json.dumps({"prompt": f"{task} {w}\nOutput:"}) + "\n" for w in WORDS), encoding="utf-8")
    return {"root": root, "folder": folder, "paths": paths, "prompts": root / "prompts"}


def test_prompt_rows_serve_the_estimate_and_never_evaluation(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b", "answer": "c"}\n')
    got = load_prompts([f])
    assert [r.kind for r in got.get("t").rows] == ["prompt", "answer"] and got.get("t").metrics == ()
    with pytest.raises(EvaluationDataError, match=r"t\.jsonl:1: a \{\"prompt\"\} row has no answer to score"):
        load_data([f], metric="exact")
    with pytest.raises(EvaluationDataError, match=r"t\.jsonl:1: a \{\"prompt\"\} row has no answer"):
        load_data([f], metric="nll")
    f.write_text('{"prompt": "a"}\n{"text": "plain"}\n')
    with pytest.raises(EvaluationDataError, match=r"t\.jsonl:2: a \{\"text\"\} row has no prompt"):
        load_prompts([f])
    f.write_text('{"prompt": "   "}\n')
    with pytest.raises(EvaluationDataError, match=r"t\.jsonl:1: 'prompt' is empty"):
        load_prompts([f])


def test_forecast_agreement_equals_greedy_generation(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two routes to the share of prompts the merge answers like the own adapter: one teacher-forced pass
    (Forecast) and generating both answers under the evaluation protocol."""
    import analysis.predict as predict
    from analysis.adapters import load_adapter
    from analysis.evaluation import ModelSpec, applied_deltas, load_model
    from analysis.evaluation.exact import generate_answers
    from analysis.forecast import Forecast
    from analysis.merge import merge_adapters

    cal = predict.Calibration("data-light (outputs)", (), 0.1, 0.9, 0.05, 0, 10, "synthetic")
    monkeypatch.setattr(predict, "load_calibrations", lambda: {predict.OUTPUTS: cal})
    loaded = load_model(ModelSpec(str(job["folder"]), device="cpu"))
    adapters = [load_adapter(p) for p in job["paths"]]
    forecast = Forecast(loaded, load_prompts([job["prompts"]]))
    shares = []
    for method, weights in (("linear", [1.0, 1.0]), ("linear", [1.0, 0.05]), ("linear", [0.9, 0.9]), ("ties", None)):
        merged = merge_adapters(adapters, method, weights=weights).modules
        preds = forecast.run(adapters, merged)
        for a, pred in zip(adapters, preds):
            prompts = [f"{a.name} {w}\nOutput:" for w in WORDS]
            with applied_deltas(loaded.model, a.modules):
                own = generate_answers(loaded.model, loaded.tokenizer, prompts)
            with applied_deltas(loaded.model, merged):
                got = generate_answers(loaded.model, loaded.tokenizer, prompts)
            share = sum(x == y for x, y in zip(own, got)) / len(prompts)
            shares.append(share)
            assert pred is not None and pred.computed_on["own_agreement"] == 1.0, pred  # 1:1 tokenizer: reproduces itself
            assert pred.computed_on["agreement"] == pytest.approx(share, abs=1e-4)
            assert pred.value == pytest.approx(share) and pred.low == pytest.approx(max(0.0, share - 0.1))
            assert pred.basis == "data-light (outputs)" and pred.computed_on["n"] == len(WORDS)
    assert max(shares) > 0 and min(shares) < 1, shares  # neither route is trivially all or nothing here
    own = forecast.run(adapters[:1], adapters[0].modules)[0]  # the own adapter keeps all of itself
    assert own is not None and own.value == 1.0
    assert forecast.run(adapters, merged, weights=[1.0, 0.0])[1] is None  # weight 0: not meant to survive


def test_merge_prompts_carries_the_data_light_estimate(job: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = job["root"] / "merged"
    code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(out), "--json",
                 "--prompts", str(job["prompts"]), "--model", str(job["folder"]), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads(printed.out)
    preview = json.loads((out / "preview.json").read_text())
    assert "measured" not in preview  # an estimate only: nothing was scored
    for tasks in (summary["tasks"], preview["tasks"]):
        for t in tasks:
            pred = t["predicted_retention"]
            assert pred["basis"] == "data-light (outputs)" and 0.0 <= pred["low"] <= pred["value"] <= pred["high"] <= 1
            sha = hashlib.sha256((job["prompts"] / t["name"] / "eval.jsonl").read_bytes()).hexdigest()
            assert pred["computed_on"]["sha256"] == sha and pred["computed_on"]["n"] == len(WORDS)
            assert t["predicted_retention_data_free"]["basis"] == "data-free"
    code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(job["root"] / "m2"),
                 "--prompts", str(job["prompts"]), "--model", str(job["folder"]), "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0 and "predicted retention (data-light (outputs); 90% interval)" in text and "Spearman" in text
    code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(job["root"] / "m3"), "--json",
                 "--no-preview", "--prompts", str(job["prompts"]), "--model", str(job["folder"]), "--device", "cpu"])
    bare = json.loads(capsys.readouterr().out)["tasks"]  # no preview: the estimate still reaches the record
    assert code == 0 and [t["predicted_retention"]["basis"] for t in bare] == ["data-light (outputs)"] * 2


def test_merge_prompt_errors_are_one_line(job: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "upper.jsonl"
    bad.write_text('{"text": "no prompt here"}\n')
    for extra, want in ((["--prompts", str(bad)], "upper.jsonl:1: a {\"text\"} row has no prompt"),
                        (["--model", str(job["folder"])], "--model measures the merge (--eval) or estimates it")):
        code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and want in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_plan_prompts_decides_from_the_data_light_estimate(job: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = job["root"] / "plan"
    code = main(["plan", *map(str, job["paths"]), "--prompts", str(job["prompts"]), "--model", str(job["folder"]),
                 "--device", "cpu", "--out", str(out), "--min-retention", "0.5"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["estimate"]["basis"] == "data-light (outputs)" and plan["measured"] is False
    assert plan["estimate"]["computed_on"]["prompts"][0]["n"] == len(WORDS)
    assert "predicted (data-light, from prompts)" in printed.out
