"""Every third-party adapter in ../shared/real_adapters loads (checked against its own header) or is
refused with the right one-line message; SD adapters of four formats line up module by module."""
from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

from analysis.adapters import DenseDelta, load_adapter
from analysis.errors import AdapterFormatError

LOADS = {
    # path: (format, LoRA pair suffix used to count modules in the raw header)
    "anirudh-peft-gpt2": ("peft", ".lora_A.weight"),
    "bbrokesoul-t2i-peft": ("peft", ".lora_A.weight"),
    "bk7195-deltacompression-peft": ("peft", ".lora_A.weight"),
    "catundchat-sd15-lora/pytorch_lora_weights.safetensors": ("diffusers-old", "_lora.down.weight"),
    "gemma3-270m-svg-lora/adapter": ("peft", ".lora_A.weight"),
    "gemma3-270m-svg-lora/adapter_curriculum_stage1": ("peft", ".lora_A.weight"),
    "gemma3-270m-svg-lora/adapter_seed123": ("peft", ".lora_A.weight"),
    "gpt2-tigrinya-lora": ("peft", ".lora_A.weight"),
    "tashu014-lora-imdb-distilbert": ("peft", ".lora_A.weight"),
    "timohavdk-sd-lora/2100-lora.safetensors": ("diffusers", ".lora.down.weight"),
    "timohavdk-sd-lora/pytorch_lora_weights.safetensors": ("diffusers", ".lora.down.weight"),
}
LYCORIS = ["lycoris-smart-falcon-lokr/smart_falcon_4_lokr.safetensors",
           "lycoris-smart-falcon-lokr/smart_falcon_8_lokr.safetensors",
           "lycoris-smart-falcon-lokr/smart_falcon_16_lokr.safetensors"]


def raw_header(path: Path) -> dict[str, dict]:
    """The safetensors header read with nothing but struct and json (independent of our reader)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def weights_of(p: Path) -> Path:
    return p / "adapter_model.safetensors" if p.is_dir() else p


@pytest.mark.parametrize("rel", sorted(LOADS))
def test_real_adapter_loads_and_matches_its_header(real_adapters: Path, rel: str) -> None:
    fmt, down_suffix = LOADS[rel]
    adapter = load_adapter(real_adapters / rel)
    header = raw_header(weights_of(real_adapters / rel))
    downs = {k: v for k, v in header.items() if k.endswith(down_suffix)}
    assert adapter.format == fmt
    assert len(adapter.modules) == len(downs) > 0
    assert Counter(d.rank for d in adapter.modules.values()) == Counter(v["shape"][0] for v in downs.values())
    n_extra = len(header) - 2 * len(downs)
    assert len(adapter.extras) == n_extra
    for d in adapter.modules.values():
        assert 0 < d.frobenius_norm() < float("inf")


def test_real_peft_details(real_adapters: Path) -> None:
    gpt2 = load_adapter(real_adapters / "gpt2-tigrinya-lora")
    assert gpt2.modules["transformer.h.0.attn.c_proj"].shape == (768, 768)  # one target, two shapes
    assert gpt2.modules["transformer.h.0.mlp.c_proj"].shape == (768, 3072)
    assert all(d.fan_in_fan_out and d.scale == 32 / 8 for d in gpt2.modules.values())
    tashu = load_adapter(real_adapters / "tashu014-lora-imdb-distilbert")
    kinds = {e.key.removeprefix("base_model.model."): e.kind for e in tashu.extras.values()}
    assert kinds == {"classifier.weight": "modules_to_save", "classifier.bias": "modules_to_save",
                     "pre_classifier.weight": "modules_to_save", "pre_classifier.bias": "modules_to_save"}
    bk = load_adapter(real_adapters / "bk7195-deltacompression-peft")
    assert bk.base_model == "cyberagent/open-calm-1b" and all(d.scale == 32.0 for d in bk.modules.values())
    assert next(iter(bk.modules.values())).A.dtype == torch.float16  # kept as stored, zero copy


def test_pickle_peft_loads_via_weights_only(real_adapters: Path) -> None:
    path = real_adapters / "thesotti-gpt2-lora-bin"
    state = torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
    adapter = load_adapter(path)
    downs = [k for k in state if k.endswith(".lora_A.weight")]
    assert adapter.format == "peft" and len(adapter.modules) == len(downs) == 24
    key = "base_model.model.transformer.h.3.attn.c_proj"
    d = adapter.modules["transformer.h.3.attn.c_proj"]
    expected = state[f"{key}.lora_B.weight"] @ state[f"{key}.lora_A.weight"] * (32 / 8)
    torch.testing.assert_close(d.dense(), expected)
    assert [e.kind for e in adapter.extras.values()] == ["other"]  # score.weight kept, not merged


@pytest.mark.parametrize("rel", LYCORIS)
def test_real_lokr(real_adapters: Path, rel: str) -> None:
    adapter = load_adapter(real_adapters / rel)
    header = raw_header(real_adapters / rel)
    modules = {k.split(".")[0] for k in header}
    assert adapter.format == "lycoris" and len(adapter.modules) == len(modules) == 350
    expected = Counter((header[f"{m}.lokr_w1_a"]["shape"][0] * header[f"{m}.lokr_w2_a"]["shape"][0],
                        header[f"{m}.lokr_w1_b"]["shape"][1] * header[f"{m}.lokr_w2_b"]["shape"][1]) for m in modules)
    assert Counter(d.shape for d in adapter.modules.values()) == expected
    assert all(isinstance(d, DenseDelta) for d in adapter.modules.values())
    assert adapter.modules["down_blocks.0.resnets.0.conv1"].kernel_shape == (3, 3)
    q = adapter.modules["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]
    assert q.shape == (768, 768) and q.frobenius_norm() > 0


def test_sd_unet_adapters_of_four_formats_line_up(real_adapters: Path) -> None:
    peft = load_adapter(real_adapters / "bbrokesoul-t2i-peft")
    old = load_adapter(real_adapters / "catundchat-sd15-lora")
    new = load_adapter(real_adapters / "timohavdk-sd-lora" / "2100-lora.safetensors")
    lokr = load_adapter(real_adapters / LYCORIS[0])
    assert (old.format, new.format) == ("diffusers-old", "diffusers")
    assert set(peft.modules) < set(old.modules) == set(new.modules) < set(lokr.modules)
    assert len(peft.modules) == 64 and len(old.modules) == 128
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0" in old.modules
    for name, d in old.modules.items():
        assert new.modules[name].shape == d.shape == lokr.modules[name].shape
        if name in peft.modules:
            assert peft.modules[name].shape == d.shape


def test_catundchat_bin_reads_through_weights_only(real_adapters: Path) -> None:
    adapter = load_adapter(real_adapters / "catundchat-sd15-lora" / "pytorch_lora_weights.bin")
    assert adapter.format == "diffusers-old" and len(adapter.modules) == 128


@pytest.mark.parametrize("rel, needle", [
    ("sam-lora-custom", "recognised formats"),
    ("sam-lora-custom/lora_rank2.safetensors", "recognised formats"),
    ("sam-lora-custom/lora_rank16.safetensors", "'w_a_000'"),
    ("lycoris-smart-falcon-lokr", "several adapters"),
    ("timohavdk-sd-lora/new.safetensors", "lora_unet_unet_"),
])
def test_real_refusals_are_one_line(real_adapters: Path, rel: str, needle: str) -> None:
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(real_adapters / rel)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and str(real_adapters / rel) in msg


def test_broken_kohya_file_says_what_is_broken(real_adapters: Path) -> None:
    """new.safetensors: diffusers keys with every '.' turned into '_' (doubled 'unet', suffix joined by '_')."""
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(real_adapters / "timohavdk-sd-lora" / "new.safetensors")
    msg = str(info.value)
    assert "tensor 'lora_unet_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k_lora_down.weight'" in msg
    assert "joined with '_'" in msg and "named twice" in msg
