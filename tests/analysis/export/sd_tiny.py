"""A tiny Stable Diffusion pipeline built from configs (no download), SD-style input LoRAs written as kohya
files, and the three readers an SD user's tools use, each giving the weight change it applies:

- diffusers: `StableDiffusionPipeline.load_lora_weights` + `fuse_lora` on a real (tiny, random) pipeline;
  the change is read as fused weight minus original weight;
- kohya (sd-scripts / A1111 / ComfyUI): up @ down * alpha / rank per module, written here independently;
- PEFT: `PeftModel.from_pretrained` on the UNet, change from `get_delta_weight`.
`mismatches` names each module whose applied change differs from the intended one, with the factor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CROSS = 32  # cross-attention width of the tiny UNet (= the tiny text encoder's hidden size)
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
TE = "text_encoder.text_model.encoder.layers"


def tiny_pipeline(tmp: Path):  # noqa: ANN201 - diffusers pipeline
    """SD 1.x-shaped pipeline (32/64 channels, two CLIP layers), seeded random weights, offline tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS,
                                norm_num_groups=32, attention_head_dim=8)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=CROSS, intermediate_size=37, num_attention_heads=4,
                                      num_hidden_layers=2, vocab_size=100, projection_dim=CROSS))
    vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=32)
    tok_dir = tmp / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def _weights(pipe) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Every weight of the UNet and the text encoder under canonical names (transformers >= 5 flattened CLIP's
    `text_model.` level away; it is put back so names match either version)."""
    out = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items() if k.endswith(".weight")}
    level = "" if hasattr(pipe.text_encoder, "text_model") else "text_model."
    out |= {f"text_encoder.{level}{k}": v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()
            if k.endswith(".weight")}
    return out


def diffusers_applied(tmp: Path, export_dir: Path, weight_name: str | None = None) -> dict[str, torch.Tensor]:
    """{canonical module: dW (out, in*kh*kw) float64} that `pipe.load_lora_weights` + `fuse_lora` apply."""
    pipe = tiny_pipeline(tmp)
    before = _weights(pipe)
    kwargs = {"weight_name": weight_name} if weight_name else {}
    pipe.load_lora_weights(str(export_dir), adapter_name="merged", **kwargs)
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go, so state_dict keys are plain again
    after = _weights(pipe)
    out = {}
    for key, w in after.items():
        diff = (w.double() - before[key].double()).reshape(w.shape[0], -1)
        if float(diff.abs().max()) > 0:
            out[key.removesuffix(".weight")] = diff
    return out


def kohya_applied(file: Path) -> dict[str, torch.Tensor]:
    """The sd-scripts / A1111 / ComfyUI rule, written independently: up @ down * alpha / rank per module,
    alpha absent -> rank; the module key is returned as written (`lora_unet_...`)."""
    sd = load_file(str(file))
    out = {}
    for key in sd:
        if not key.endswith(".lora_down.weight"):
            continue
        module = key.removesuffix(".lora_down.weight")
        down, up = sd[key].double(), sd[f"{module}.lora_up.weight"].double()
        rank = down.shape[0]
        alpha = float(sd[f"{module}.alpha"]) if f"{module}.alpha" in sd else float(rank)
        out[module] = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)) * (alpha / rank)
    return out


def peft_applied(unet, export_dir: Path) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """{module: dW} of a PEFT export loaded onto `unet` by `PeftModel.from_pretrained` (PEFT's own layers)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(unet, str(export_dir))
    return {name.removeprefix("base_model.model."): layer.get_delta_weight("default").double().reshape(
        layer.get_delta_weight("default").shape[0], -1)
        for name, layer in model.named_modules() if isinstance(layer, LoraLayer) and "default" in layer.lora_A}


def kohya_name(module: str) -> str:
    """The kohya key of a canonical module (independent of the library's mapping)."""
    if module.startswith("text_encoder."):
        return "lora_te_" + module.removeprefix("text_encoder.").replace(".", "_")
    return "lora_unet_" + module.replace(".", "_")


def mismatches(intended: Mapping[str, torch.Tensor], applied: Mapping[str, torch.Tensor], tol: float) -> list[str]:
    """One line per module whose applied change is off: relative error and the factor <applied, intended> /
    ||intended||^2 (1.5 = the x1.5 alpha bug); a module missing or extra in the loader is named too."""
    out = [f"{m}: not applied by the loader" for m in sorted(set(intended) - set(applied))]
    out += [f"{m}: applied but not intended" for m in sorted(set(applied) - set(intended))]
    for m in sorted(set(intended) & set(applied)):
        want, got = intended[m].double(), applied[m].double()
        rel = float((got - want).norm() / want.norm())
        if rel > tol:
            factor = float((got * want).sum() / (want * want).sum())
            out.append(f"{m}: relative error {rel:.2e}, applied = {factor:.4f} x intended")
    return out


def lora_pair(g: torch.Generator, n_out: int, n_in: int, rank: int, kernel: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) with random non-zero entries; `kernel` 0: linear, k >= 1: a k x k conv (1 x 1 up)."""
    down = torch.randn(rank, n_in, kernel, kernel, generator=g) if kernel else torch.randn(rank, n_in, generator=g)
    up = torch.randn(n_out, rank, 1, 1, generator=g) if kernel else torch.randn(n_out, rank, generator=g)
    return down * 0.1, up * 0.1


# module -> (n_out, n_in, kernel: 0 linear, k conv k x k) of the tiny pipeline
SHAPES = {
    f"{ATTN}.attn1.to_q": (32, 32, 0),
    f"{ATTN}.attn1.to_out.0": (32, 32, 0),
    f"{ATTN}.attn2.to_k": (32, CROSS, 0),
    f"{ATTN}.ff.net.0.proj": (256, 32, 0),
    "down_blocks.0.attentions.1.proj_in": (32, 32, 1),
    "down_blocks.0.resnets.0.conv1": (32, 32, 3),
    f"{TE}.0.self_attn.q_proj": (CROSS, CROSS, 0),
    f"{TE}.1.mlp.fc1": (37, CROSS, 0),
}


def write_kohya_input(path: Path, spec: Mapping[str, tuple[int, float]], seed: int) -> Path:
    """A kohya LoRA file with the given {module: (rank, alpha)} (mixed ranks and alphas, conv, text encoder)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (rank, alpha) in spec.items():
        n_out, n_in, k = SHAPES[module]
        down, up = lora_pair(g, n_out, n_in, rank, k)
        key = kohya_name(module)
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                    f"{key}.alpha": torch.tensor(float(alpha))}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path
