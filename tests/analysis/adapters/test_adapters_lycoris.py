"""LoHa / LoKr in kohya naming versus PEFT's independent LoHa/LoKr implementation (a LyCORIS port)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import TinyConvNet, tiny_llama
from safetensors.torch import save_file

from analysis.adapters import DenseDelta, load_adapter
from analysis.adapters.lycoris import LazyDenseDelta
from analysis.adapters.names import canonical_to_kohya

pytest.importorskip("peft")


def lycoris_file(peft_model, path: Path, alpha: float, prefix_keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Write PEFT's LoHa/LoKr parameters under kohya names (+ .alpha); return PEFT's delta per module."""
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for name, layer in peft_model.named_modules():
        params = {k: getattr(layer, k)["default"] for k in prefix_keys
                  if hasattr(layer, k) and "default" in getattr(layer, k)}
        if not params:
            continue
        module = name.removeprefix("base_model.model.")
        kohya = canonical_to_kohya(module)
        for k, v in params.items():
            tensors[f"{kohya}.{k}"] = v.detach().clone().to(torch.float16)
            params[k].data = tensors[f"{kohya}.{k}"].float()  # PEFT computes with the same fp16-rounded values
        tensors[f"{kohya}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        with torch.no_grad():
            deltas[module] = layer.get_delta_weight("default").float()
    save_file(tensors, path)
    return deltas


def check(adapter, deltas: dict[str, torch.Tensor]) -> None:
    assert adapter.format == "lycoris"
    assert sorted(adapter.modules) == sorted(deltas)
    for name, ref in deltas.items():
        d = adapter.modules[name]
        assert isinstance(d, DenseDelta)
        ours = d.dense()
        err = torch.linalg.vector_norm(ours - ref.reshape(ours.shape)) / torch.linalg.vector_norm(ref)
        assert err < 1e-5, name


LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def test_loha_linear_and_conv(tmp_path: Path) -> None:
    from peft import LoHaConfig, get_peft_model

    torch.manual_seed(0)
    llama = get_peft_model(tiny_llama(), LoHaConfig(r=4, alpha=6, target_modules=["q_proj", "down_proj"],
                                                    init_weights=False))
    deltas = lycoris_file(llama, tmp_path / "loha.safetensors", 6.0, LOHA)
    adapter = load_adapter(tmp_path / "loha.safetensors", check_finite=False)
    d = adapter.modules["model.layers.0.self_attn.q_proj"]
    assert isinstance(d, LazyDenseDelta) and not d.built and d.shape == (64, 64)  # lazy until used
    check(adapter, deltas)
    assert d.built

    for tucker in (False, True):
        conv = get_peft_model(TinyConvNet(), LoHaConfig(r=2, alpha=3, target_modules=["conv1", "conv2"],
                                                        init_weights=False, use_effective_conv2d=tucker))
        deltas = lycoris_file(conv, tmp_path / f"conv{tucker}.safetensors", 3.0, LOHA)
        adapter = load_adapter(tmp_path / f"conv{tucker}.safetensors")
        check(adapter, deltas)
        assert adapter.modules["conv1"].kernel_shape == (3, 3) and adapter.modules["conv1"].shape == (8, 27)


@pytest.mark.parametrize("decompose_both", [False, True])
def test_lokr_linear(tmp_path: Path, decompose_both: bool) -> None:
    from peft import LoKrConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(tiny_llama(), LoKrConfig(r=2, alpha=5, target_modules=["q_proj", "gate_proj"],
                                                    init_weights=False, decompose_both=decompose_both))
    deltas = lycoris_file(model, tmp_path / "lokr.safetensors", 5.0, LOKR)
    check(load_adapter(tmp_path / "lokr.safetensors"), deltas)


def test_lokr_scale_uses_w1_rank_then_w2_rank(tmp_path: Path) -> None:
    """LyCORIS: dim = lokr_w1_a.shape[1] if w1 is factored, else lokr_w2_a.shape[1]; both full -> scale 1."""
    g = torch.Generator().manual_seed(0)
    w1a, w1b = torch.randn(4, 3, generator=g), torch.randn(3, 2, generator=g)
    w2a, w2b = torch.randn(5, 2, generator=g), torch.randn(2, 6, generator=g)
    w1, w2 = torch.randn(4, 2, generator=g), torch.randn(5, 6, generator=g)
    alpha = torch.tensor(7.0)
    tensors = {"lora_unet_a.lokr_w1_a": w1a, "lora_unet_a.lokr_w1_b": w1b, "lora_unet_a.lokr_w2_a": w2a,
               "lora_unet_a.lokr_w2_b": w2b, "lora_unet_a.alpha": alpha,
               "lora_unet_b.lokr_w1": w1, "lora_unet_b.lokr_w2_a": w2a, "lora_unet_b.lokr_w2_b": w2b,
               "lora_unet_b.alpha": alpha,
               "lora_unet_c.lokr_w1": w1, "lora_unet_c.lokr_w2": w2, "lora_unet_c.alpha": alpha}
    save_file({k: v.clone() for k, v in tensors.items()}, tmp_path / "k.safetensors")
    m = load_adapter(tmp_path / "k.safetensors").modules
    torch.testing.assert_close(m["a"].dense(), torch.kron(w1a @ w1b, w2a @ w2b) * 7 / 3)
    torch.testing.assert_close(m["b"].dense(), torch.kron(w1, w2a @ w2b) * 7 / 2)
    torch.testing.assert_close(m["c"].dense(), torch.kron(w1, w2))
    assert m["a"].shape == (20, 12)


def test_lokr_conv_full_factors_layout_and_lycoris_scale(tmp_path: Path) -> None:
    """Full w1 (a, b) and 4-D w2 (c, d, kh, kw): the flattened kron equals PEFT's kernel; the scale is
    LyCORIS's (both factors full -> alpha forced to dim, scale 1) where PEFT keeps alpha / r."""
    from peft import LoKrConfig, get_peft_model

    torch.manual_seed(2)
    model = get_peft_model(TinyConvNet(), LoKrConfig(r=2, alpha=3, target_modules=["conv1", "conv2"],
                                                     init_weights=False))
    deltas = lycoris_file(model, tmp_path / "lokr_conv.safetensors", 3.0, LOKR)
    adapter = load_adapter(tmp_path / "lokr_conv.safetensors")
    assert adapter.modules["conv1"].kernel_shape == (3, 3) and adapter.modules["conv1"].kind == "conv"
    for name, ref in deltas.items():
        ours = adapter.modules[name].dense()  # (out, in*kh*kw)
        torch.testing.assert_close(ours * (3 / 2), ref.reshape(ours.shape), rtol=1e-5, atol=1e-6)


def test_kohya_conv_lora(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(2, 4, 3, 3, generator=g), torch.randn(6, 2, 1, 1, generator=g)
    m = "lora_unet_down_blocks_0_resnets_0_conv1"
    save_file({f"{m}.lora_down.weight": down, f"{m}.lora_up.weight": up, f"{m}.alpha": torch.tensor(1.0)},
              tmp_path / "c.safetensors")
    adapter = load_adapter(tmp_path / "c.safetensors")
    d = adapter.modules["down_blocks.0.resnets.0.conv1"]
    assert adapter.format == "kohya" and (d.kind, d.kernel_shape, d.shape, d.scale) == ("conv", (3, 3), (6, 36), 0.5)
    ref = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)  # (out, in, kh, kw)
    torch.testing.assert_close(d.dense(), ref.reshape(6, -1) * 0.5)
