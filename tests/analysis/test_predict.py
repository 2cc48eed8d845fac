"""The retention estimate: its signals against dense recomputation, its calibration against known cases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.adapters.model import Adapter, DenseDelta, LowRankDelta
from analysis.predict import (
    Calibration,
    Signal,
    calibrate,
    capture_inputs,
    features,
    fit_logistic,
    function_signal,
    task_signals,
    weight_signal,
)


def _lr(n_out: int, n_in: int, r: int, seed: int, scale: float = 2.0) -> LowRankDelta:
    g = torch.Generator().manual_seed(seed)
    return LowRankDelta(A=torch.randn(r, n_in, generator=g), B=torch.randn(n_out, r, generator=g), scale=scale)


def _adapter(name: str, modules: dict) -> Adapter:
    return Adapter(name=name, path=Path(name), format="peft", base_model=None, config={}, modules=modules)


@pytest.mark.parametrize("dense_merge", [False, True])
def test_weight_signal_matches_dense(dense_merge: bool) -> None:
    t = _lr(12, 9, 3, 0)
    m = _lr(12, 9, 5, 1)
    if dense_merge:
        m = DenseDelta(m.dense(torch.float64))
    s = weight_signal(m, t)
    T, M = t.dense(torch.float64), m.dense(torch.float64)
    assert s.inner == pytest.approx(float((T * M).sum()), rel=1e-9)
    assert s.task2 == pytest.approx(float((T * T).sum()), rel=1e-9)
    assert s.merged2 == pytest.approx(float((M * M).sum()), rel=1e-9)
    c = float((T * M).sum() / (T * T).sum())
    assert s.scale == pytest.approx(c, rel=1e-9)
    assert s.residual == pytest.approx(float(torch.linalg.norm(M - c * T) / torch.linalg.norm(T)), rel=1e-7)


def test_function_signal_matches_dense() -> None:
    t, m = _lr(7, 10, 2, 2), _lr(7, 10, 4, 3)
    X = torch.randn(30, 10, generator=torch.Generator().manual_seed(4))
    s = function_signal(m, t, X)
    YT, YM = X.double() @ t.dense(torch.float64).T, X.double() @ m.dense(torch.float64).T
    assert s.inner == pytest.approx(float((YT * YM).sum()), rel=1e-9)
    assert s.task2 == pytest.approx(float((YT * YT).sum()), rel=1e-9)
    c = s.scale
    assert s.residual == pytest.approx(float(torch.linalg.norm(YM - c * YT) / torch.linalg.norm(YT)), rel=1e-7)


def test_down_scaling_is_not_interference() -> None:
    """The old estimate read a task at half weight as half lost; the signal says: scale 0.5, nothing foreign."""
    t = _lr(16, 16, 4, 5)
    half = LowRankDelta(A=t.A, B=t.B, scale=t.scale * 0.5)
    s = weight_signal(half, t)
    assert s.scale == pytest.approx(0.5, rel=1e-9)
    assert s.residual == pytest.approx(0.0, abs=1e-6)


def test_foreign_update_is_residual_only() -> None:
    """T plus an update orthogonal to it (disjoint output rows): scale 1, residual ||E|| / ||T||."""
    t = LowRankDelta(A=torch.randn(2, 8), B=torch.cat([torch.randn(4, 2), torch.zeros(4, 2)]), scale=1.0)
    e = LowRankDelta(A=torch.randn(2, 8), B=torch.cat([torch.zeros(4, 2), torch.randn(4, 2)]), scale=1.0)
    merged = DenseDelta(t.dense(torch.float64) + e.dense(torch.float64))
    s = weight_signal(merged, t)
    assert s.scale == pytest.approx(1.0, rel=1e-9)
    assert s.residual == pytest.approx(e.frobenius_norm() / t.frobenius_norm(), rel=1e-7)


def test_task_signals_pool_over_the_task_modules_only() -> None:
    a = _adapter("a", {"m1": _lr(6, 6, 2, 6), "m2": _lr(6, 6, 2, 7)})
    b = _adapter("b", {"m2": _lr(6, 6, 2, 8)})
    merged = {"m1": a.modules["m1"], "m2": b.modules["m2"]}
    sa, sb = task_signals([a, b], merged)
    one, two = weight_signal(merged["m1"], a.modules["m1"]), weight_signal(merged["m2"], a.modules["m2"])
    assert sa.inner == pytest.approx(one.inner + two.inner)
    assert sa.task2 == pytest.approx(one.task2 + two.task2)
    assert sb.scale == pytest.approx(1.0) and sb.residual == pytest.approx(0.0, abs=1e-6)


def test_logistic_fit_recovers_known_weights() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(400), rng.uniform(0, 2, 400), rng.normal(0, 1, 400)])
    w_true = np.array([-1.0, 2.0, -0.5])
    y = 1 / (1 + np.exp(-(X @ w_true)))  # exact probabilities as targets
    assert np.allclose(fit_logistic(X, y, l2=0.0), w_true, atol=1e-6)


def test_calibrate_reports_on_held_back_trials_only() -> None:
    rng = np.random.default_rng(1)
    signals = [Signal(inner=c, task2=1.0, merged2=c * c + r * r) for c, r in zip(rng.uniform(0, 1.2, 120),
                                                                                  rng.uniform(0, 2, 120))]
    truth = [float(1 / (1 + math.exp(-(4 * s.scale - 2 * math.log(s.residual + 1e-3) - 3)))) for s in signals]
    held = [i % 3 == 0 for i in range(120)]
    cal = calibrate(signals, truth, held, basis="data-free", measured_on="synthetic")
    assert cal.n_train == 80 and cal.n_heldout == 40
    assert cal.spearman_heldout > 0.99 and cal.mae_heldout < 0.01
    v, lo, hi = cal.predict(signals[0])
    assert lo <= v <= hi and 0.0 <= lo and hi <= 1.0
    # a map fitted on noise says so on the held-back trials
    noise = calibrate(signals, list(rng.uniform(0, 1, 120)), held, basis="data-free", measured_on="noise")
    assert abs(noise.spearman_heldout) < 0.5


def test_features_are_finite_for_degenerate_signals() -> None:
    for s in (Signal(0.0, 0.0, 0.0), Signal(-5.0, 1.0, 30.0), Signal(1.0, 1.0, 1.0)):
        assert np.all(np.isfinite(features(s)))
    assert isinstance(Calibration("data-free", (0.0, 0.0, 0.0), 0.1, 0.5, 0.1, 1, 1, "x").predict(Signal(1, 1, 1))[0],
                      float)


def test_capture_inputs_are_what_the_module_sees() -> None:
    """Layer 0's q_proj input, captured by the hook, equals input_layernorm(embed(ids)) at the real tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()

    class Tok:  # whitespace-separated integers -> ids, right padded with 0
        def __call__(self, texts, return_tensors, padding, add_special_tokens):
            seqs = [[int(w) for w in t.split()] for t in texts]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            return {"input_ids": ids, "attention_mask": mask}

    prompts = ["1 2 3 4", "5 6", "7 8 9"]
    X = capture_inputs(model, Tok(), ["model.layers.0.self_attn.q_proj"], prompts, max_tokens=100)
    X = X["model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        ids = torch.tensor([int(w) for p in prompts for w in p.split()])
        want = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    assert X.shape == (9, 16)
    assert torch.allclose(X, want, atol=1e-6)
    thin = capture_inputs(model, Tok(), ["model.layers.0.self_attn.q_proj"], prompts, max_tokens=4)
    assert thin["model.layers.0.self_attn.q_proj"].shape == (4, 16)


def test_preview_carries_the_same_estimate_as_the_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two routes to one estimate: the preview's pooled sums and analysis.predict.task_signals."""
    import analysis.predict as predict
    from analysis.merge.ops import linear_combination
    from analysis.preview import preview_merge

    cal = Calibration("data-free", (0.5, 1.5, -0.7), 0.1, 0.8, 0.05, 10, 5, "synthetic")
    monkeypatch.setattr(predict, "load_calibrations", lambda: {"data-free": cal})
    a = _adapter("a", {"m1": _lr(10, 8, 2, 11), "m2": _lr(10, 8, 2, 12)})
    b = _adapter("b", {"m1": _lr(10, 8, 2, 13)})
    merged = {"m1": linear_combination([a.modules["m1"], b.modules["m1"]], [0.5, 0.5]),
              "m2": linear_combination([a.modules["m2"]], [0.5])}
    prev = preview_merge([a, b], merged, granularity="rows", p=0.1)
    for i, s in enumerate(task_signals([a, b], merged)):
        got = prev["per_input"][i]["predicted_retention"]
        want = cal.predict(s)
        assert got["value"] == pytest.approx(want[0], abs=1e-4) and got["low"] == pytest.approx(want[1], abs=1e-4)
        assert got["basis"] == "data-free" and got["measured_on"] == "synthetic"
    zero = preview_merge([a, b], merged, granularity="rows", p=0.1, weights=[1.0, 0.0])
    assert zero["per_input"][1]["predicted_retention"] is None  # a weight-0 input is not meant to survive
    monkeypatch.setattr(predict, "load_calibrations", lambda: {})
    assert preview_merge([a, b], merged, granularity="rows", p=0.1)["per_input"][0]["predicted_retention"] is None


def test_calibration_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a fit writes is what the tool loads: the map, its interval, its held-back record and scatter."""
    import json

    import analysis.predict as predict

    cal = Calibration("data-free", (0.1, 1.0, -0.5), 0.2, 0.75, 0.12, 40, 20, "synthetic set")
    path = tmp_path / "retention_calibration.json"
    rec = cal.record() | {"heldout_points": [[0.9, 1.0], [0.2, 0.1]], "spearman_heldout_vs_nll_retention": 0.7}
    path.write_text(json.dumps({"calibrations": {"data-free": rec}}))
    monkeypatch.setattr(predict, "CALIBRATION", path)
    predict.load_calibrations.cache_clear()
    try:
        assert predict.load_calibrations()["data-free"] == cal
        record = predict.track_record("data-free")
        assert record["heldout_points"] == [[0.9, 1.0], [0.2, 0.1]] and record["spearman_heldout"] == 0.75
        assert predict.track_record("data-light") is None
        got = predict.estimate(Signal(1.0, 1.0, 1.0), "data-free")
        assert got is not None and (got.value, got.low, got.high) == pytest.approx(cal.predict(Signal(1.0, 1.0, 1.0)))
    finally:
        predict.load_calibrations.cache_clear()


def test_agreement_is_greedy_reproduction_in_one_pass() -> None:
    """A model that always writes the next character of a fixed text: it greedily reproduces exactly the answers
    that continue that text, whatever the batch padding; a changed answer (any token) does not count."""
    from analysis.forecast import agreement

    succ = {}  # character id -> the id the model writes after it

    class Tok:
        pad_token_id = 0
        eos_token_id = 0
        all_special_ids = [0]

        def __call__(self, s: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [ord(c) for c in s]}

        def __len__(self) -> int:
            return 128

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    for piece in ("abcdef ghij\n", "klmn "):  # every prompt ending in f or n is answered "ghij"
        for a, b in zip(piece, piece[1:]):
            succ[ord(a)] = ord(b)

    class Model(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            nxt = input_ids.clone().apply_(lambda i: succ.get(i, 1))  # (b, t)
            logits = torch.nn.functional.one_hot(nxt, 128).float()  # (b, t, V)
            return type("Out", (), {"logits": logits})()

    model = Model()
    prompts, answers = ["abcdef", "cdef", "klmn"], [" ghij"] * 3  # lengths differ: padding in a batch
    assert agreement(model, Tok(), {}, prompts, answers, batch_size=2) == 1.0
    assert agreement(model, Tok(), {}, prompts, [" ghij", " ghiX", " ghij"]) == pytest.approx(2 / 3)
    assert agreement(model, Tok(), {}, prompts, [" ghi", " ghij", " ghijk"]) == pytest.approx(1 / 3)  # stops too early
    # or too late; the completion as written: without its leading space it is not what greedy decoding writes
    assert agreement(model, Tok(), {}, prompts, ["ghij", " ghij", "ghij"]) == pytest.approx(1 / 3)


def test_shipped_calibration_is_the_fit_of_the_shipped_ground_truth() -> None:
    """The calibration the tool ships (analysis/data/retention_calibration.json) is what bench/retention_fit.py
    computes from the committed ground truth, byte for byte in its numbers: no hand-edited track record."""
    import hashlib
    import importlib.util
    import json

    from analysis.predict import CALIBRATION, REACH

    repo = Path(__file__).resolve().parents[2]
    shipped = json.loads(CALIBRATION.read_text())
    truth_path = repo / shipped["truth"]["file"]
    raw = truth_path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == shipped["truth"]["sha256"]
    spec = importlib.util.spec_from_file_location("retention_fit", repo / "bench" / "retention_fit.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    again = fit.fit(json.loads(raw))["calibrations"]
    assert set(again) == set(shipped["calibrations"]) and REACH in again
    for basis, rec in shipped["calibrations"].items():
        for key in ("weights", "halfwidth", "spearman_heldout", "mae_heldout", "n_train", "n_heldout"):
            assert again[basis][key] == pytest.approx(rec[key], abs=1e-9), (basis, key)
