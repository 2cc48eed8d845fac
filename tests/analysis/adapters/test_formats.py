"""The format registry: detection per format, and the refusal that lists what the registry holds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.adapters import detect_format, formats, load_adapter
from analysis.adapters.parsed import Parsed
from analysis.errors import AdapterFormatError

KEYS = {
    "peft": ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
    "diffusers": ["unet.down_blocks.0.attentions.0.to_q.lora_A.weight"],
    "diffusers-old": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"],
    "kohya": ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"],
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_each_format_is_detected_by_its_registered_detector(name: str) -> None:
    assert detect_format(KEYS[name]) == name
    assert formats.detect(KEYS[name]).name == name


def test_unknown_file_is_refused_listing_every_registered_format(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"some.tensor": torch.ones(2, 2)}, str(path))
    with pytest.raises(AdapterFormatError) as err:
        load_adapter(path)
    text = str(err.value)
    assert "'some.tensor'" in text and "\n" not in text
    assert all(f.looks_like in text for f in formats.FORMATS)  # the error is generated from the registry


def test_a_registered_format_is_detected_and_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(src) -> Parsed:  # noqa: ANN001 - a TensorSource
        raise AdapterFormatError(f"{src.path}: parsed by the toy format")

    monkeypatch.setattr(formats, "FORMATS", list(formats.FORMATS))
    toy = formats.register_format("toy", "'toy.<module>.w'", lambda keys: any(k.startswith("toy.") for k in keys),
                                  parse)
    assert detect_format(["toy.layer.w"]) == "toy" and toy in formats.FORMATS
    path = tmp_path / "toy.safetensors"
    save_file({"toy.layer.w": torch.ones(2, 2)}, str(path))
    with pytest.raises(AdapterFormatError, match="parsed by the toy format"):
        load_adapter(path)
