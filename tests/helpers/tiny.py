"""Tiny models and real PEFT adapters on them, for tests that need PEFT's own numbers.

Everything is built in memory from a fixed seed in well under a second (no downloads):
- `tiny_llama()`   LlamaForCausalLM, hidden 64, 2 layers, vocab 128
- `tiny_gpt2()`    GPT2LMHeadModel, 64 wide, 2 layers (Conv1D layers: fan_in_fan_out)
- `TinyConvNet()`  Conv2d 3x3 + Conv2d 1x1 + Linear, for conv LoRA
`save_peft_adapter` wraps one with `get_peft_model` (random non-zero A and B via
init_lora_weights=False), saves it with `save_pretrained` and returns the live PeftModel, so a test
can compare what a loader reads from disk with `peft_deltas(model)`: PEFT's own `get_delta_weight`.
Import as `from helpers.tiny import ...` (tests/ is on sys.path through tests/conftest.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis.adapters.peft_format import PEFT_PREFIX


def tiny_llama(seed: int = 0, *, hidden: int = 64, layers: int = 2, vocab: int = 128) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3 // 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0, *, width: int = 64, layers: int = 2, vocab: int = 128) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


class TinyConvNet(nn.Module):
    """Two convolutions (3x3 and 1x1) and a linear head: the smallest model with conv LoRA targets."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (b, 16, h, w)
        return self.fc(h.mean(dim=(2, 3)))  # (b, 10)


def save_peft_adapter(model: nn.Module, out_dir: Path, *, seed: int = 0, base_model: str | None = None,
                      **lora_kwargs: Any) -> nn.Module:
    """Wrap `model` with a LoRA (random non-zero factors), save it to `out_dir`, return the PeftModel."""
    from peft import LoraConfig, get_peft_model

    lora_kwargs.setdefault("init_lora_weights", False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    if base_model is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_model
    peft_model.save_pretrained(str(out_dir))
    return peft_model


def peft_deltas(peft_model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """PEFT's `get_delta_weight` per LoRA module, keyed by the module's path in the base model.

    These are in the base weight's layout: (in, out) for fan_in_fan_out Conv1D, (num_emb, dim) for
    embeddings, (out, in, kh, kw) for convs.
    """
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    for name, layer in peft_model.named_modules():
        if isinstance(layer, LoraLayer) and (adapter in layer.lora_A or adapter in layer.lora_embedding_A):
            with torch.no_grad():
                out[name.removeprefix(PEFT_PREFIX)] = layer.get_delta_weight(adapter).detach().float()
    return out
