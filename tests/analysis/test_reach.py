"""The data-free reach estimate (`analysis.reach`) on a real tiny model: probes the model writes itself, the reach
against PEFT as a second route, the signal's parts, and the faces that carry it (`merge --reach`, the default `plan`)."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from helpers.model_folders import model_folder, task_adapters

from analysis.cli import main


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from analysis.adapters import load_adapter
    from analysis.evaluation import ModelSpec, load_model

    root = tmp_path_factory.mktemp("reach")
    folder = model_folder(root, "llama", seed=4)
    paths = task_adapters(folder, root, ["upper", "reverse"], seed=40)
    loaded = load_model(ModelSpec(str(folder), device="cpu"))
    return {"root": root, "folder": folder, "paths": paths, "loaded": loaded,
            "adapters": [load_adapter(p) for p in paths]}


def test_probes_are_the_models_own_text_and_leave_the_random_state(job: dict[str, Any]) -> None:
    from analysis.reach import PROBE_SEQS, PROBE_TOKENS, write_probes

    model, tok = job["loaded"].model, job["loaded"].tokenizer
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ids, mask = write_probes(model, tok)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    again, _ = write_probes(model, tok)
    assert torch.equal(ids, again)  # a fixed seed: the same probes every time
    assert ids.shape[0] == PROBE_SEQS and ids.shape == mask.shape
    assert int(mask.sum(1).min()) >= PROBE_TOKENS  # every sequence has at least the generated tokens, all real
    other, _ = write_probes(model, tok, seed=2)
    assert not torch.equal(ids, other)  # sampled, not greedy


def test_reach_equals_kl_through_peft(job: dict[str, Any]) -> None:
    """Two routes to the reach of an adapter: `Reach.of` (deltas added to the weights) and the KL between PEFT's
    model with the adapter loaded and the bare base, on the same probes."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from analysis.reach import Reach

    reach = Reach(job["loaded"])
    assert reach.of({}) == pytest.approx(0.0, abs=1e-7)
    ids, mask = reach._probes
    base = AutoModelForCausalLM.from_pretrained(str(job["folder"]), local_files_only=True).eval()
    with torch.no_grad():
        lb = base(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    for a, path in zip(job["adapters"], job["paths"]):
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(job["folder"]), local_files_only=True), str(path)).eval()
        with torch.no_grad():
            lp = peft(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        kl = torch.nn.functional.kl_div(lb, lp, log_target=True, reduction="none").sum(-1)  # KL(adapted || base)
        want = float(kl[mask.bool()].mean())
        assert want > 1e-4  # the adapter does move the model
        assert reach.own(a) == pytest.approx(want, rel=1e-3)


def test_padded_probes_are_scored_as_written(job: dict[str, Any]) -> None:
    """Starts of different lengths are left padded: the reach over the batch equals the reach of each sequence run
    alone, unpadded, through PEFT (padding masked out, positions as the text was written)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from analysis.reach import Reach, write_probes

    model, tok = job["loaded"].model, job["loaded"].tokenizer
    ids, mask = write_probes(model, tok, starts=["a", "bcd", "\n", "ab", "abcdef"], tokens=8)
    assert int((mask == 0).sum()) > 0 and (mask.sum(1) >= 9).all()  # really padded; every row has its own tokens
    reach = Reach(job["loaded"], _probes=(ids, mask))
    base = AutoModelForCausalLM.from_pretrained(str(job["folder"]), local_files_only=True).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(job["folder"]), local_files_only=True),
                                     str(job["paths"][0])).eval()
    total, count = 0.0, 0
    for row, m in zip(ids, mask):
        alone = row[m.bool()][None]  # (1, real tokens)
        with torch.no_grad():
            lb = base(input_ids=alone).logits.float().log_softmax(-1)
            lp = peft(input_ids=alone).logits.float().log_softmax(-1)
        total += float((lp.exp() * (lp - lb)).sum())
        count += alone.shape[1]
    assert reach.own(job["adapters"][0]) == pytest.approx(total / count, rel=1e-4)


def test_signal_parts(job: dict[str, Any]) -> None:
    """The scale and the two reaches mean what they say: a task alone keeps all of itself and adds nothing; at half
    weight its scale halves; concatenated with another, what is added is the other adapter."""
    from analysis.merge import merge_adapters
    from analysis.reach import Reach

    reach = Reach(job["loaded"])
    a, b = job["adapters"]
    alone = reach.signals([a], a.modules)[0]
    assert alone.scale == pytest.approx(1.0) and alone.other == pytest.approx(0.0, abs=1e-6)
    assert alone.own == pytest.approx(reach.own(a))
    half = reach.signals([a, b], merge_adapters([a, b], "linear", weights=[0.5, 0.0]).modules, weights=[0.5, 0.0])
    assert half[0].scale == pytest.approx(0.5, abs=1e-6) and half[0].other == pytest.approx(0.0, abs=1e-6)
    assert half[1] is None  # weight 0: not meant to survive
    both = reach.signals([a, b], merge_adapters([a, b], "cat").modules)
    for s, other in zip(both, (b, a)):
        assert s.scale == pytest.approx(1.0, abs=0.05)  # random factors: near orthogonal, each kept whole
        assert s.other == pytest.approx(reach.of(other.modules), rel=0.2)


def _reach_calibration(monkeypatch: pytest.MonkeyPatch) -> Any:
    import analysis.predict as predict

    cal = predict.Calibration(predict.REACH, (0.5, 1.0, -0.4, 0.2), 0.3, 0.55, 0.28, 100, 40, "synthetic")
    real = predict.load_calibrations()
    monkeypatch.setattr(predict, "load_calibrations", lambda: {**real, predict.REACH: cal})
    return cal


def test_merge_reach_carries_the_estimate(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from analysis.adapters import load_adapter
    from analysis.merge import merge_adapters
    from analysis.predict import estimate_reach
    from analysis.reach import Reach

    _reach_calibration(monkeypatch)
    out = job["root"] / "merged"
    code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(out), "--json", "--reach",
                 "--model", str(job["folder"]), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads(printed.out)
    preview = json.loads((out / "preview.json").read_text())
    written = load_adapter(out)  # the adapter as written, read back: the library's estimate on it, a second route
    direct = Reach(job["loaded"]).signals(job["adapters"], written.modules)
    for tasks in (summary["tasks"], preview["tasks"]):
        for t, signal in zip(tasks, direct):
            pred = t["predicted_retention"]
            assert pred["basis"] == "data-free (reach)" and 0.0 <= pred["low"] <= pred["value"] <= pred["high"] <= 1
            assert pred["computed_on"]["reach_other"] == pytest.approx(signal.other, rel=1e-3, abs=1e-5)
            assert pred["value"] == pytest.approx(estimate_reach(signal, {}).value, abs=1e-3)
            assert "no task data" in pred["computed_on"]["probes"]
            assert t["predicted_retention_weights"]["basis"] == "data-free"
    assert merge_adapters(job["adapters"], "linear").modules.keys() == written.modules.keys()
    code = main(["merge", *map(str, job["paths"]), "--method", "linear", "--out", str(job["root"] / "m2"), "--reach",
                 "--model", str(job["folder"]), "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0 and "predicted retention (data-free (reach); 90% interval)" in text and "Spearman" in text


def test_plan_decides_from_reach_by_default(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _reach_calibration(monkeypatch)
    out = job["root"] / "plan"
    code = main(["plan", *map(str, job["paths"]), "--model", str(job["folder"]), "--device", "cpu",
                 "--out", str(out), "--min-retention", "0.5"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["estimate"]["basis"] == "data-free (reach)" and plan["measured"] is False
    assert "no task data" in plan["estimate"]["computed_on"]["probes"]
    assert "predicted (data-free, reach)" in printed.out
    weights = job["root"] / "plan-w"
    assert main(["plan", *map(str, job["paths"]), "--weights-only", "--out", str(weights)]) == 0
    assert json.loads((weights / "plan.json").read_text())["estimate"]["basis"] == "data-free"
    assert "predicted (data-free, weights only)" in capsys.readouterr().out


def test_plan_reach_errors_are_one_line_with_the_way_out(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Adapters that do not fit the model the default plan estimates on, a missing reach calibration and two
    estimates asked at once: one line each, naming what to pass, and nothing written."""
    import analysis.predict as predict

    gpt2 = model_folder(job["root"], "gpt2", seed=5)  # no q_proj / v_proj: the llama adapters do not fit it
    out = job["root"] / "plan-bad"
    cases = [(["--model", str(gpt2), "--device", "cpu"], "pass --model for the adapters' base, or --weights-only"),
             (["--weights-only", "--prompts", str(job["root"])], "--weights-only and --prompts: pick one")]
    for extra, want in cases:
        code = main(["plan", *map(str, job["paths"]), *extra, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and want in err[-1] and not err[-1].startswith("Traceback"), err
        assert not any(line.startswith("plan: group") for line in err)  # refused before any planning
        assert not out.exists()
    monkeypatch.setattr(predict, "load_calibrations", lambda: {})
    code = main(["plan", *map(str, job["paths"]), "--model", str(job["folder"]), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no calibrated reach estimate" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
