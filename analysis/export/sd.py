"""What a Stable Diffusion export needs to know about its modules: which pipeline component each belongs
to (the UNet or DiT denoiser, a text encoder) and which base family the adapter is for.

Canonical names keep text encoders' component prefix (`text_encoder.`, `text_encoder_2.`) and drop the
denoiser's (`analysis.adapters.names`), so the denoiser's component is decided here from the module's
first path element: a diffusers UNet's top-level children (`down_blocks`, `mid_block`, ...) mean `unet`,
a DiT's (`transformer_blocks`, `single_transformer_blocks`, ...) mean `transformer`. Anything else (an
LLM's `model.layers.*`) is not a diffusion pipeline's module and is refused by the diffusers writer.

The base family (kohya's `ss_base_model_version`) comes from the inputs' own kohya metadata when they
agree, else from shapes that tell the families apart: the UNet's cross-attention input width
(`attn2.to_k`: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL), a second text encoder (SDXL), or the text encoder's
width (768 CLIP-L: SD 1.x, 1024 OpenCLIP-H: SD 2.x). Unknown (None) when none of these is present.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.adapters.names import TEXT_ENCODER_PREFIXES
from analysis.errors import RecipeError

UNET_ROOTS = frozenset({"down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "conv_norm_out",
                        "time_embedding", "add_embedding", "class_embedding", "encoder_hid_proj"})
DIT_ROOTS = frozenset({"transformer_blocks", "single_transformer_blocks", "x_embedder", "context_embedder",
                       "time_text_embed", "norm_out", "proj_out", "pos_embed", "caption_projection"})
CROSS_WIDTH = {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}
TEXT_WIDTH = {768: "sd_v1", 1024: "sd_v2"}
#: kohya's ss_base_model_version -> (modelspec.architecture of a LoRA, modelspec.implementation, resolution)
MODELSPEC = {
    "sd_v1": ("stable-diffusion-v1/lora", "diffusers", "512x512"),
    "sd_v2": ("stable-diffusion-v2-512/lora", "diffusers", "512x512"),
    "sdxl_base_v1-0": ("stable-diffusion-xl-v1-base/lora", "https://github.com/Stability-AI/generative-models",
                       "1024x1024"),
}


def split_component(name: str, *, denoiser: str) -> tuple[str, str]:
    """(pipeline component, module path inside it) of a canonical module name."""
    for prefix in TEXT_ENCODER_PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1], name[len(prefix):]
    return denoiser, name


def denoiser_of(modules: Sequence[str]) -> str:
    """`unet` or `transformer` for the denoiser modules of a diffusion adapter; one error line naming a module
    that belongs to neither (an LLM adapter has no diffusers pipeline to load into)."""
    roots = {m.split(".", 1)[0] for m in modules if not m.startswith(TEXT_ENCODER_PREFIXES)}
    foreign = sorted(r for r in roots if r not in UNET_ROOTS | DIT_ROOTS)
    if foreign:
        example = next(m for m in sorted(modules) if m.split(".", 1)[0] == foreign[0])
        raise RecipeError(f"module {example}: not a module of a diffusers UNet, DiT or text encoder; the diffusers "
                          "format is for Stable Diffusion-style pipelines (use --format peft for this adapter)")
    return "transformer" if roots and roots <= DIT_ROOTS and not roots & UNET_ROOTS else "unet"


def base_family(modules: Mapping[str, Delta], inputs: Sequence[Adapter]) -> str | None:
    """kohya's `ss_base_model_version` (sd_v1, sd_v2, sdxl_base_v1-0) of the merge, or None when unknown."""
    recorded = {str(a.config.get("metadata", {}).get("ss_base_model_version")) for a in inputs
                if isinstance(a.config.get("metadata"), Mapping) and a.config["metadata"].get("ss_base_model_version")}
    if len(recorded) == 1:
        return recorded.pop()
    if any(m.startswith("text_encoder_2.") for m in modules):
        return "sdxl_base_v1-0"
    for name, delta in sorted(modules.items()):
        if name.endswith("attn2.to_k") and not name.startswith(TEXT_ENCODER_PREFIXES):
            return CROSS_WIDTH.get(int(delta.shape[1]))
    for name, delta in sorted(modules.items()):
        if name.startswith("text_encoder.") and name.endswith("self_attn.q_proj"):
            return TEXT_WIDTH.get(int(delta.shape[1]))
    return None
