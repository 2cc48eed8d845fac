"""Canonical module names: one spelling per layer, whatever format the adapter came in.

Canonical names are the model's own module paths. For Stable Diffusion the UNet (or DiT
transformer) is the bare diffusers path (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`)
and text encoders keep their component prefix (`text_encoder.text_model.encoder.layers.0.self_attn.q_proj`),
so a PEFT, a diffusers and a kohya LoRA of the same UNet line up module by module.

kohya flattens the dotted path with underscores (`lora_unet_down_blocks_0_..._attn1_to_q`), which is
ambiguous because module names themselves contain underscores. `kohya_to_canonical` undoes it with a
tokenizer that knows the multi-word names of diffusers/transformers modules (longest match first).
"""
from __future__ import annotations

import re

#: kohya prefix -> canonical component prefix.
KOHYA_PREFIXES: dict[str, str] = {
    "lora_unet_": "",
    "lora_te1_": "text_encoder.",
    "lora_te2_": "text_encoder_2.",
    "lora_te3_": "text_encoder_3.",
    "lora_te_": "text_encoder.",
}

#: diffusers pipeline components whose prefix is dropped (the denoiser) or kept (text encoders).
DENOISER_PREFIXES = ("unet.", "transformer.")
TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", "text_encoder_3.")

# Module names that contain underscores, as they appear in diffusers UNets/DiTs, CLIP text encoders
# and the original SGM (SDXL) layout kohya also uses. Longest match wins, so `conv_shortcut` beats `conv`.
_MULTI_WORD = """
down_blocks up_blocks mid_block transformer_blocks single_transformer_blocks
proj_in proj_out proj_mlp to_q to_k to_v to_out to_add_out add_q_proj add_k_proj add_v_proj
time_emb_proj conv_shortcut conv_in conv_out conv_norm_out norm_out time_embedding linear_1 linear_2
add_embedding class_embedding encoder_hid_proj time_text_embed timestep_embedder guidance_embedder
text_embedder x_embedder context_embedder ff_context norm1_context norm_added_q norm_added_k norm_q norm_k
text_model self_attn q_proj k_proj v_proj out_proj final_layer_norm layer_norm1 layer_norm2
token_embedding position_embedding text_projection
input_blocks middle_block output_blocks in_layers out_layers emb_layers skip_connection time_embed label_emb
o_proj gate_proj up_proj down_proj gate_up_proj qkv_proj embed_tokens lm_head input_layernorm
post_attention_layernorm c_attn c_proj c_fc query_key_value dense_h_to_4h dense_4h_to_h q_lin k_lin v_lin
out_lin word_embeddings in_proj x_proj dt_proj
"""
_VOCAB: dict[int, set[tuple[str, ...]]] = {}
for _word in _MULTI_WORD.split():
    _parts = tuple(_word.split("_"))
    _VOCAB.setdefault(len(_parts), set()).add(_parts)
_MAX_WORDS = max(_VOCAB)


def split_kohya_prefix(key: str) -> tuple[str, str] | None:
    """('lora_te1_', rest) for a kohya module name, None when it has no kohya prefix."""
    for prefix in KOHYA_PREFIXES:  # lora_te1_/lora_te2_ are listed before lora_te_
        if key.startswith(prefix):
            return prefix, key[len(prefix):]
    return None


def unflatten_underscored(flat: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in`."""
    parts = flat.split("_")
    out: list[str] = []
    i = 0
    while i < len(parts):
        for n in range(min(_MAX_WORDS, len(parts) - i), 1, -1):
            if tuple(parts[i:i + n]) in _VOCAB.get(n, ()):
                out.append("_".join(parts[i:i + n]))
                i += n
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def kohya_to_canonical(kohya_module: str) -> str:
    """`lora_te_text_model_encoder_layers_0_mlp_fc1` -> `text_encoder.text_model.encoder.layers.0.mlp.fc1`."""
    split = split_kohya_prefix(kohya_module)
    if split is None:
        raise ValueError(f"not a kohya module name: {kohya_module!r}")
    prefix, rest = split
    return KOHYA_PREFIXES[prefix] + unflatten_underscored(rest)


def canonical_to_kohya(canonical: str) -> str:
    """Inverse of `kohya_to_canonical` (text encoders get the SD1.x `lora_te_` prefix, `text_encoder_2` `lora_te2_`)."""
    for prefix, kohya in (("text_encoder_2.", "lora_te2_"), ("text_encoder_3.", "lora_te3_"),
                          ("text_encoder.", "lora_te_")):
        if canonical.startswith(prefix):
            return kohya + canonical[len(prefix):].replace(".", "_")
    return "lora_unet_" + canonical.replace(".", "_")


def diffusers_canonical(module: str) -> str:
    """Drop the denoiser's pipeline prefix (`unet.`/`transformer.`); text encoders keep theirs."""
    for prefix in DENOISER_PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix):]
    return module


def has_diffusers_prefix(key: str) -> bool:
    return key.startswith(DENOISER_PREFIXES + TEXT_ENCODER_PREFIXES)


# Old attention-processor layout: `...attn1.processor.to_q_lora.down.weight` (UNet) and
# `text_encoder...self_attn.to_q_lora.down.weight` (text encoder, monkey-patched CLIP attention).
OLD_PROCESSOR_KEY = re.compile(
    r"^(?P<module>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|add_v_proj)"
    r"_lora\.(?P<which>down|up)\.weight$")
_OLD_UNET_PROJ = {"to_out": "to_out.0"}
_OLD_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def old_processor_canonical(module: str, proj: str) -> str:
    """Canonical name of an old attention-processor LoRA: `to_out` is `to_out.0` in the UNet and
    the CLIP projections (`q_proj`...) in a text encoder."""
    if module.startswith(TEXT_ENCODER_PREFIXES):
        return f"{module}.{_OLD_TEXT_PROJ.get(proj, proj)}"
    return f"{diffusers_canonical(module)}.{_OLD_UNET_PROJ.get(proj, proj)}"
