"""Test inputs for the merge lab: random factored adapters, and real PEFT adapters on a tiny Llama.

Kept beside the merge tests (imported by the export tests through sys.path) so they do not depend on
the loader; the real-PEFT adapters are read back with PEFT's own layer objects, an independent route.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from analysis.adapters.model import Adapter, LowRankDelta

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded in tests

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def random_adapter(name: str, *, rank: int = 4, shapes: dict[str, tuple[int, int]] | None = None,
                   seed: int = 0, scale: float = 0.5, base: str = "base") -> Adapter:
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"layers.0.q": (12, 10), "layers.0.v": (8, 10)}
    modules = {m: LowRankDelta(A=torch.randn(rank, n_in, generator=g), B=torch.randn(n_out, rank, generator=g),
                               scale=scale) for m, (n_out, n_in) in shapes.items()}
    return Adapter(name=name, path=Path(f"/tmp/{name}"), format="peft", base_model=base, config={},
                   modules=modules, _sha256=f"{seed:064d}")


def tiny_llama():  # noqa: ANN201 - transformers model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def peft_adapter(tmp: Path, name: str, *, seed: int, rank: int = 4, alpha: int = 8,
                 targets: list[str] | None = None) -> Adapter:
    """A real PEFT LoRA (random non-zero B) saved to tmp/name, returned as an Adapter read via PEFT's layers."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = get_peft_model(tiny_llama(), LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or TARGETS,
                                                    init_lora_weights=True))
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for full, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            with torch.no_grad():
                layer.lora_A["default"].weight.copy_(torch.randn(layer.lora_A["default"].weight.shape, generator=g))
                layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g))
            canonical = full.removeprefix("base_model.model.")
            modules[canonical] = LowRankDelta(A=layer.lora_A["default"].weight.detach().clone(),
                                              B=layer.lora_B["default"].weight.detach().clone(),
                                              scale=float(layer.scaling["default"]))
    model.peft_config["default"].base_model_name_or_path = "tiny-llama"
    model.save_pretrained(str(tmp / name))
    files = sorted((tmp / name).iterdir())
    return Adapter(name=name, path=tmp / name, format="peft", base_model="tiny-llama",
                   config={"task_type": "CAUSAL_LM"}, modules=modules, files=files)


def peft_delta_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load an exported directory with PeftModel.from_pretrained and return get_delta_weight per module."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(tiny_llama(), str(path))
    out = {}
    for full, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            out[full.removeprefix("base_model.model.")] = layer.get_delta_weight("default").detach().double()
    return out
