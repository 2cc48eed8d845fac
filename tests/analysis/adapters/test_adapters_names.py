"""kohya's underscore-flattened names back to dotted diffusers paths, and the scale/pattern rules."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from analysis.adapters.names import canonical_to_kohya, kohya_to_canonical, old_processor_canonical
from analysis.adapters.scaling import lora_scale, pattern_value

SD_UNET_NAMES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.2.attentions.1.proj_in",
    "down_blocks.2.attentions.1.proj_out",
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.1.resnets.0.conv_shortcut",
    "down_blocks.0.resnets.1.time_emb_proj",
    "down_blocks.0.downsamplers.0.conv",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_k",
    "mid_block.resnets.1.conv2",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v",
    "up_blocks.1.upsamplers.0.conv",
    "up_blocks.2.resnets.2.conv_shortcut",
    "conv_in",
    "conv_out",
    "time_embedding.linear_1",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "text_encoder.text_model.encoder.layers.11.self_attn.out_proj",
    "text_encoder.text_model.encoder.layers.5.mlp.fc1",
    "text_encoder_2.text_model.encoder.layers.31.mlp.fc2",
]


@pytest.mark.parametrize("name", SD_UNET_NAMES)
def test_kohya_round_trip(name: str) -> None:
    kohya = canonical_to_kohya(name)
    assert "." not in kohya and kohya.startswith(("lora_unet_", "lora_te_", "lora_te2_"))
    assert kohya_to_canonical(kohya) == name


def test_known_kohya_names() -> None:
    assert kohya_to_canonical("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0") == \
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    assert kohya_to_canonical("lora_te1_text_model_encoder_layers_3_mlp_fc2") == \
        "text_encoder.text_model.encoder.layers.3.mlp.fc2"
    assert kohya_to_canonical("lora_te2_text_model_encoder_layers_3_self_attn_k_proj") == \
        "text_encoder_2.text_model.encoder.layers.3.self_attn.k_proj"


def test_every_module_of_a_real_kohya_file_round_trips(real_adapters: Path) -> None:
    path = real_adapters / "lycoris-smart-falcon-lokr" / "smart_falcon_4_lokr.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__")
    modules = {k.split(".")[0] for k in header}
    assert len(modules) == 350
    for m in modules:
        assert canonical_to_kohya(kohya_to_canonical(m)) == m


def test_old_processor_names() -> None:
    assert old_processor_canonical("down_blocks.0.attentions.0.transformer_blocks.0.attn1", "to_out") == \
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    assert old_processor_canonical("unet.mid_block.attentions.0.transformer_blocks.0.attn2", "to_q") == \
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_q"
    assert old_processor_canonical("text_encoder.text_model.encoder.layers.0.self_attn", "to_out") == \
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj"


def test_pattern_value_follows_peft_get_pattern_key() -> None:
    from peft.utils.other import get_pattern_key

    patterns = {"q_proj": 1, r"layers\.1\..*v_proj": 2, "layers.0.self_attn.k_proj": 3, "proj": 4}
    keys = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.xk_proj", "q_proj", "model.mlp.up"]
    for key in keys:
        peft_key = get_pattern_key(list(patterns), key)
        assert pattern_value(patterns, key, None) == patterns.get(peft_key), key
    assert pattern_value(patterns, "model.layers.0.self_attn.xk_proj", 0) == 0  # 'proj' must match a whole suffix


def test_lora_scale_rules() -> None:
    assert lora_scale(8, 16) == 2.0
    assert lora_scale(8, 16, use_rslora=True) == pytest.approx(16 / math.sqrt(8))
    assert lora_scale(4, None) == 1.0 and lora_scale(4, 0) == 1.0  # kohya/LyCORIS: absent or 0 -> alpha = rank
    with pytest.raises(ValueError):
        lora_scale(0, 1.0)
