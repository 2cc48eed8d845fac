"""Our dW versus PEFT's own get_delta_weight, on real PEFT adapters saved by save_pretrained."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny import TinyConvNet, peft_deltas, save_peft_adapter, tiny_gpt2, tiny_llama
from safetensors.torch import load_file, save_file

from analysis.adapters import LowRankDelta, load_adapter

pytest.importorskip("peft")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(ours.double() - ref.double()) / torch.linalg.vector_norm(ref.double()))


def assert_parity(adapter, ref: dict[str, torch.Tensor]) -> None:
    """Every module PEFT has, we have, with dW equal to get_delta_weight in the base weight's layout."""
    assert sorted(adapter.modules) == sorted(ref)
    for name, expected in ref.items():
        delta = adapter.modules[name]
        ours = delta.dense()
        if delta.fan_in_fan_out:
            ours = ours.T  # PEFT returns Conv1D deltas in the (in, out) layout of the base weight
        assert rel_err(ours, expected.reshape(ours.shape)) < 1e-5, name
        assert ours.shape == expected.reshape(ours.shape).shape


@pytest.fixture(scope="module")
def llama_lora(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("llama") / "patterns"
    model = save_peft_adapter(
        tiny_llama(), out, seed=1, base_model="tiny-llama", r=4, lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "embed_tokens"],
        rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 6},
        alpha_pattern={"layers.0.mlp.down_proj": 3, "o_proj": 5},
        modules_to_save=["lm_head"])
    return out, model


def test_llama_patterns_embedding_and_extras(llama_lora) -> None:
    out, model = llama_lora
    adapter = load_adapter(out)
    assert adapter.format == "peft" and adapter.base_model == "tiny-llama"
    assert_parity(adapter, peft_deltas(model))
    # rank_pattern / alpha_pattern resolved with PEFT's rule: the scale PEFT itself uses
    from peft.tuners.lora import LoraLayer

    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            assert adapter.modules[name.removeprefix("base_model.model.")].scale == pytest.approx(
                layer.scaling["default"])
    assert adapter.modules["model.layers.0.self_attn.v_proj"].rank == 2
    assert adapter.modules["model.layers.1.self_attn.q_proj"].rank == 6
    assert adapter.modules["model.layers.0.self_attn.q_proj"].scale == pytest.approx(8 / 4)
    assert adapter.modules["model.layers.0.mlp.down_proj"].scale == pytest.approx(3 / 4)
    emb = adapter.modules["model.embed_tokens"]
    assert emb.kind == "embedding" and emb.shape == (128, 64)  # (num_emb, dim) like PEFT's delta
    kinds = {e.key: e.kind for e in adapter.extras.values()}
    assert kinds["base_model.model.lm_head.weight"] == "modules_to_save"
    assert not adapter.warnings


def test_rslora(tmp_path: Path) -> None:
    model = save_peft_adapter(tiny_llama(), tmp_path / "rs", seed=2, r=8, lora_alpha=16, use_rslora=True,
                              target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2})
    adapter = load_adapter(tmp_path / "rs")
    assert_parity(adapter, peft_deltas(model))
    assert adapter.modules["model.layers.0.self_attn.q_proj"].scale == pytest.approx(16 / math.sqrt(8))
    assert adapter.modules["model.layers.0.self_attn.v_proj"].scale == pytest.approx(16 / math.sqrt(2))


def test_gpt2_conv1d_fan_in_fan_out_and_one_target_two_shapes(tmp_path: Path) -> None:
    model = save_peft_adapter(tiny_gpt2(), tmp_path / "gpt2", seed=3, r=4, lora_alpha=12,
                              target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    adapter = load_adapter(tmp_path / "gpt2")
    assert_parity(adapter, peft_deltas(model))
    assert adapter.modules["transformer.h.0.attn.c_proj"].shape == (64, 64)
    assert adapter.modules["transformer.h.0.mlp.c_proj"].shape == (64, 256)
    assert adapter.modules["transformer.h.0.attn.c_attn"].shape == (192, 64)  # factors stay (out, in)
    assert all(d.fan_in_fan_out for d in adapter.modules.values())


def test_conv2d_lora(tmp_path: Path) -> None:
    model = save_peft_adapter(TinyConvNet(), tmp_path / "conv", seed=4, r=3, lora_alpha=6,
                              target_modules=["conv1", "conv2", "fc"])
    adapter = load_adapter(tmp_path / "conv")
    assert_parity(adapter, peft_deltas(model))
    c1, c2 = adapter.modules["conv1"], adapter.modules["conv2"]
    assert (c1.kind, c1.kernel_shape, c1.shape) == ("conv", (3, 3), (8, 27))
    assert (c2.kind, c2.kernel_shape, c2.shape) == ("conv", (1, 1), (16, 8))
    assert adapter.modules["fc"].kind == "linear"


def test_dora_keeps_magnitudes_and_warns(tmp_path: Path) -> None:
    model = save_peft_adapter(tiny_llama(), tmp_path / "dora", seed=5, r=4, lora_alpha=8, use_dora=True,
                              target_modules=["q_proj", "v_proj"])
    adapter = load_adapter(tmp_path / "dora")
    # plain LoRA part B @ A * scaling, straight from PEFT's parameters (independent of get_delta_weight)
    from peft.tuners.lora import LoraLayer

    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            ref = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
            assert rel_err(adapter.modules[name.removeprefix("base_model.model.")].dense(), ref.detach()) < 1e-5
    mags = [e for e in adapter.extras.values() if e.kind == "dora_magnitude"]
    assert len(mags) == len(adapter.modules) == 4
    assert any("DoRA" in w for w in adapter.warnings)


def test_bin_checkpoint_via_weights_only(tmp_path: Path, llama_lora) -> None:
    _, model = llama_lora
    model.save_pretrained(str(tmp_path / "bin"), safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").exists()
    assert_parity(load_adapter(tmp_path / "bin"), peft_deltas(model))


def test_adapter_name_in_keys_and_missing_config(tmp_path: Path, llama_lora) -> None:
    out, model = llama_lora
    state = load_file(out / "adapter_model.safetensors")
    renamed = {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
               : v for k, v in state.items()}
    (tmp_path / "old").mkdir()
    save_file(renamed, tmp_path / "old" / "adapter_model.safetensors")
    shutil.copy(out / "adapter_config.json", tmp_path / "old")
    assert_parity(load_adapter(tmp_path / "old"), peft_deltas(model))

    lone = tmp_path / "lone.safetensors"
    shutil.copy(out / "adapter_model.safetensors", lone)
    bare = load_adapter(lone)
    assert any("assumed scale 1.0" in w for w in bare.warnings)
    q = bare.modules["model.layers.0.self_attn.q_proj"]
    assert isinstance(q, LowRankDelta) and q.scale == 1.0

    save_file(state, tmp_path / "meta.safetensors", metadata={"lora_alpha": "8"})
    with_alpha = load_adapter(tmp_path / "meta.safetensors")
    assert with_alpha.modules["model.layers.0.self_attn.v_proj"].scale == pytest.approx(8 / 2)
    assert any("lora_alpha = 8" in w for w in with_alpha.warnings)


def test_diffusers_prefixed_peft_keys_use_metadata_config(tmp_path: Path, llama_lora) -> None:
    out, model = llama_lora
    config = json.loads((out / "adapter_config.json").read_text())
    state = load_file(out / "adapter_model.safetensors")
    lora = {"transformer." + k.removeprefix("base_model.model."): v for k, v in state.items() if ".lora_" in k}
    meta = {f"transformer.{k}": config[k] for k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern")}
    save_file(lora, tmp_path / "pipe.safetensors", metadata={"lora_adapter_metadata": json.dumps(meta)})
    adapter = load_adapter(tmp_path / "pipe.safetensors")
    assert adapter.format == "diffusers"
    assert_parity(adapter, peft_deltas(model))  # `transformer.` dropped: canonical names equal PEFT's
