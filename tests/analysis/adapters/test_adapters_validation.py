"""Each broken input gives one AdapterFormatError line naming the file and the tensor (crafted in tmp_path)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.adapters import load_adapter
from analysis.adapters.safetensors_io import SafetensorsFile
from analysis.errors import AdapterFormatError

Q = "base_model.model.model.layers.0.self_attn.q_proj"


def lora(r: int = 4, n_in: int = 16, n_out: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{Q}.lora_A.weight": torch.randn(r, n_in, generator=g),
            f"{Q}.lora_B.weight": torch.randn(n_out, r, generator=g)}


def peft_dir(tmp: Path, tensors: dict[str, torch.Tensor] | None = None, **config: object) -> Path:
    d = tmp / "adapter"
    d.mkdir(exist_ok=True)
    save_file(tensors if tensors is not None else lora(), d / "adapter_model.safetensors")
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]} | config
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_inconsistent_factor_shapes(tmp_path: Path) -> None:
    t = lora()
    t[f"{Q}.lora_B.weight"] = torch.randn(8, 3)
    refused(peft_dir(tmp_path, t), "adapter_model.safetensors", f"tensor '{Q}.lora_B.weight'", "[8, 3]")


def test_unsupported_dtype(tmp_path: Path) -> None:
    t = lora()
    t[f"{Q}.lora_A.weight"] = torch.ones(4, 16, dtype=torch.int32)
    refused(peft_dir(tmp_path, t), f"tensor '{Q}.lora_A.weight'", "unsupported dtype 'I32'")


def test_offsets_past_end_of_file(tmp_path: Path) -> None:
    path = peft_dir(tmp_path) / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # a truncated download
    refused(path.parent, "adapter_model.safetensors", "truncated", "tensor '")


def test_shape_and_offsets_disagree_before_any_allocation(tmp_path: Path) -> None:
    huge = {"x.lora_A.weight": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 16]}}
    msg = refused(raw_safetensors(tmp_path / "huge.safetensors", huge, bytes(16)), "tensor 'x.lora_A.weight'")
    assert "span 16 bytes" in msg


def test_overlapping_offsets_and_garbled_header(tmp_path: Path) -> None:
    both = {"a.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "a.lora_B.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}
    refused(raw_safetensors(tmp_path / "o.safetensors", both, bytes(24)), "overlap")
    (tmp_path / "g.safetensors").write_bytes(struct.pack("<Q", 12) + b"{not json!!}")
    refused(tmp_path / "g.safetensors", "g.safetensors", "garbled safetensors header")
    (tmp_path / "t.safetensors").write_bytes(b"\x01\x02")
    refused(tmp_path / "t.safetensors", "shorter than the 8-byte header")
    (tmp_path / "n.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    refused(tmp_path / "n.safetensors", "does not fit")


@pytest.mark.parametrize("drop", ["A", "B"])
def test_one_factor_without_the_other(tmp_path: Path, drop: str) -> None:
    t = lora()
    del t[f"{Q}.lora_{drop}.weight"]
    keep = "B" if drop == "A" else "A"
    refused(peft_dir(tmp_path, t), f"tensor '{Q}.lora_{keep}.weight' has no matching {drop}")


def test_missing_and_broken_config(tmp_path: Path) -> None:
    d = peft_dir(tmp_path)
    (d / "adapter_config.json").unlink()
    refused(d, "adapter_config.json", "missing")
    (d / "adapter_config.json").write_text('{"r": 4, "lora_alpha": ')
    refused(d, "adapter_config.json", "broken JSON")


def test_rank_zero(tmp_path: Path) -> None:
    refused(peft_dir(tmp_path, r=0), "adapter_config.json", "'r' must be a positive integer")
    zero = {f"{Q}.lora_A.weight": torch.zeros(0, 16), f"{Q}.lora_B.weight": torch.zeros(8, 0)}
    refused(peft_dir(tmp_path, zero), f"tensor '{Q}.lora_A.weight'", "r = 0")


def test_non_lora_peft_type(tmp_path: Path) -> None:
    refused(peft_dir(tmp_path, peft_type="IA3"), "adapter_config.json", "'IA3' is not supported")


def test_rank_disagreeing_with_config_warns(tmp_path: Path) -> None:
    adapter = load_adapter(peft_dir(tmp_path, r=8))
    assert any(f"'{Q}.lora_A.weight' has rank 4" in w and "r=8" in w for w in adapter.warnings)


def test_nan_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    t = lora()
    t[f"{Q}.lora_B.weight"][0, 0] = float("nan")
    t[f"{Q}.lora_B.weight"][1, 1] = float("inf")
    msg = refused(peft_dir(tmp_path, t), f"tensor '{Q}.lora_B.weight' has 2 NaN/Inf values")
    assert msg.startswith(str(tmp_path / "adapter" / "adapter_model.safetensors"))


class NotATensor:
    pass


def test_pickle_needing_code_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    torch.save({"x": NotATensor()}, tmp_path / "p" / "adapter_model.bin")
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    refused(tmp_path / "p", "adapter_model.bin", "refusing to unpickle", "weights_only")


def test_unknown_layout_lists_formats(tmp_path: Path) -> None:
    save_file({"w_a_000": torch.ones(2, 3), "w_b_000": torch.ones(3, 2)}, tmp_path / "x.safetensors")
    refused(tmp_path / "x.safetensors", "x.safetensors", "PEFT", "diffusers", "kohya", "LyCORIS")


def test_kohya_pair_mismatch_and_lone_half(tmp_path: Path) -> None:
    m = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{m}.lora_down.weight": torch.ones(4, 8), f"{m}.lora_up.weight": torch.ones(8, 2)},
              tmp_path / "k.safetensors")
    refused(tmp_path / "k.safetensors", f"tensor '{m}.lora_up.weight'", "[8, 2]")
    save_file({f"{m}.lora_down.weight": torch.ones(4, 8), f"{m}.alpha": torch.tensor(2.0)}, tmp_path / "h.safetensors")
    refused(tmp_path / "h.safetensors", f"tensor '{m}.lora_down.weight' has no matching lora_up.weight")


def test_tensors_are_zero_copy_views_of_the_bytes_read_once(tmp_path: Path) -> None:
    d = peft_dir(tmp_path)
    f = SafetensorsFile(d / "adapter_model.safetensors")
    a = f.get(f"{Q}.lora_A.weight")
    torch.testing.assert_close(a, lora()[f"{Q}.lora_A.weight"])
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(f.data))
    assert base <= a.data_ptr() < base + len(f.data)  # a view on the bytes read at open, not a copy
    adapter = load_adapter(d, check_finite=False)
    q = adapter.modules["model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(q.dense(), lora()[f"{Q}.lora_B.weight"] @ lora()[f"{Q}.lora_A.weight"] * 2.0)


def test_misaligned_and_bf16_tensors_and_legacy_pickle(tmp_path: Path) -> None:
    """An F32 tensor at an odd offset (after an F16 alpha) is copied, not mis-viewed; BF16 read as stored."""
    m = "lora_unet_down_blocks_0_attentions_0_proj_in"
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(4, 8, generator=g), torch.randn(8, 4, generator=g).to(torch.bfloat16)
    header = {f"{m}.alpha": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]},
              f"{m}.lora_down.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [2, 130]},
              f"{m}.lora_up.weight": {"dtype": "BF16", "shape": [8, 4], "data_offsets": [130, 194]}}
    data = (torch.tensor(2.0, dtype=torch.float16).view(torch.int16).numpy().tobytes() + down.numpy().tobytes()
            + up.view(torch.int16).numpy().tobytes())
    adapter = load_adapter(raw_safetensors(tmp_path / "mis.safetensors", header, data))
    d = adapter.modules["down_blocks.0.attentions.0.proj_in"]
    assert adapter.format == "kohya" and d.scale == 0.5 and d.B.dtype == torch.bfloat16
    torch.testing.assert_close(d.dense(), (up.float() @ down) * 0.5)

    torch.save(lora(), tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    legacy = load_adapter(tmp_path / "legacy.bin")
    assert legacy.format == "peft" and any("assumed scale 1.0" in w for w in legacy.warnings)
