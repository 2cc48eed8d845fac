"""The evaluator's parts that need no real base model: patching deltas, restoring, scoring.

The patched forward pass is checked against PEFT's own LoRA forward on a tiny Llama (two routes to
the same logits). The real-model tests live in tests/sample_adapters/.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import save_peft_adapter, tiny_gpt2, tiny_llama

from analysis.adapters import load_adapter
from analysis.adapters.model import DenseDelta, LowRankDelta
from analysis.errors import IncompatibleAdaptersError
from analysis.evaluation import sample_task_names
from analysis.evaluation.exact import clean_completion, score_predictions
from analysis.evaluation.fit import applied_deltas


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise_equal(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert set(now) == set(snap)
    for k, v in snap.items():
        assert torch.equal(now[k], v), f"{k} changed"


def test_patched_forward_matches_peft_forward(tmp_path: Path) -> None:
    base = tiny_llama(seed=1)
    ids = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(0))  # (b, t)
    peft_model = save_peft_adapter(tiny_llama(seed=1), tmp_path / "ad", seed=3, r=4, lora_alpha=8,
                                   target_modules=["q_proj", "v_proj", "o_proj"])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits  # (b, t, vocab)
        plain = base(input_ids=ids).logits
    adapter = load_adapter(tmp_path / "ad")
    snap = _snapshot(base)
    with torch.no_grad(), applied_deltas(base, adapter.modules):
        got = base(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3  # the adapter really changes the output
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    _assert_bitwise_equal(base, snap)


def test_fan_in_fan_out_delta_is_transposed(tmp_path: Path) -> None:
    base = tiny_gpt2(seed=2)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    peft_model = save_peft_adapter(tiny_gpt2(seed=2), tmp_path / "g", seed=4, r=4, lora_alpha=4,
                                   target_modules=["c_attn"], fan_in_fan_out=True)
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
    adapter = load_adapter(tmp_path / "g")
    with torch.no_grad(), applied_deltas(base, adapter.modules):
        got = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_weights_restored_bitwise_even_after_an_error() -> None:
    model = tiny_llama(seed=5)
    snap = _snapshot(model)
    g = torch.Generator().manual_seed(0)
    deltas = {"model.layers.0.self_attn.q_proj": LowRankDelta(A=torch.randn(2, 64, generator=g),
                                                              B=torch.randn(64, 2, generator=g), scale=0.37)}
    with pytest.raises(RuntimeError, match="boom"):
        with applied_deltas(model, deltas):
            w = model.model.layers[0].self_attn.q_proj.weight
            assert not torch.equal(w, snap["model.layers.0.self_attn.q_proj.weight"])
            raise RuntimeError("boom")
    _assert_bitwise_equal(model, snap)


def test_missing_module_and_bad_shape_name_the_module_and_touch_nothing() -> None:
    model = tiny_llama(seed=6)
    snap = _snapshot(model)
    good = DenseDelta(W=torch.ones(64, 64))
    with pytest.raises(IncompatibleAdaptersError, match=r"model\.layers\.9\.self_attn\.q_proj.*not found"):
        with applied_deltas(model, {"model.layers.0.self_attn.q_proj": good,
                                    "model.layers.9.self_attn.q_proj": good}):
            pass
    # k_proj is 64 -> 32 (2 of 4 heads): a (64, 64) update does not fit
    with pytest.raises(IncompatibleAdaptersError, match=r"model\.layers\.1\.self_attn\.k_proj.*\(64, 64\)"):
        with applied_deltas(model, {"model.layers.0.self_attn.q_proj": good,
                                    "model.layers.1.self_attn.k_proj": good}):
            pass
    _assert_bitwise_equal(model, snap)


def test_clean_completion_cuts_at_first_newline_and_strips() -> None:
    assert clean_completion(" 57\nInput: 3") == "57"
    assert clean_completion("  a b  ") == "a b"
    assert clean_completion("\nfoo") == ""


def test_score_predictions_counts_exact_matches_and_lists_mistakes_first() -> None:
    expected = ["1", "2", "3", "4"]
    res = score_predictions([f"p{i}" for i in range(4)], expected, ["1", "2 ", "3", "four"], n_examples=2)
    assert res["n"] == 4 and res["correct"] == 2 and res["accuracy"] == 0.5
    assert [e["correct"] for e in res["examples"]] == [False, False]
    assert res["examples"][0]["prediction"] == "2 "


def test_sample_tasks_are_on_disk() -> None:
    assert len(sample_task_names()) >= 8
