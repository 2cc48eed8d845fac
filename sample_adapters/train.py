"""Training one sample LoRA adapter: PEFT LoRA on q/k/v/o, loss on the answer tokens only.

Why these choices (see also README.md): every adapter targets the same modules with the same rank, so
the overlap between any two is measured on identical module grids; attention-only r=8 is enough for
these short-answer tasks and keeps each adapter at ~1.8 MB in fp16. The training text is exactly
what the evaluator will see: the raw prompt (no chat template) followed by " <answer>\\n", tokenized
as two pieces so the prompt tokens match those fed at evaluation time. Only the answer tokens and the
closing newline carry loss.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from analysis.consolidate.data import collate, encode_example  # one encoding for training and consolidation

log = logging.getLogger(__name__)

HF_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    steps: int = 150
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0


def answer_loss(pm: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the answer tokens, projecting only their hidden states onto the vocabulary.

    Same loss as `pm(**batch).loss`, but the 49k-wide lm_head runs on ~5 positions per example
    instead of all ~30: about a fifth less compute per step on CPU.
    """
    causal_lm = pm.get_base_model()  # LlamaForCausalLM with the LoRA layers injected
    hidden = causal_lm.model(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).last_hidden_state  # (b, t, d)
    target = batch["labels"][:, 1:]  # (b, t-1): position i predicts token i+1
    keep = target != -100  # (b, t-1)
    logits = causal_lm.lm_head(hidden[:, :-1][keep])  # (n_answer, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def train_lora(model: Any, tokenizer: Any, rows: Sequence[dict[str, str]], cfg: TrainConfig, *,
               on_step: Callable[[int, float], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Wrap `model` with a fresh LoRA, train it on `rows`, return (peft_model, stats).

    The base weights stay frozen; call `peft_model.unload()` afterwards to get the bare base back.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)  # LoRA A init
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    pm.peft_config["default"].base_model_name_or_path = HF_BASE_ID
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_example(tokenizer, r["prompt"], r["answer"]) for r in rows]
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    t0 = time.time()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            perm = list(range(len(encoded)))
            rng.shuffle(perm)
            order.extend(perm)
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = collate([encoded[i] for i in idx], pad_id)
        loss = answer_loss(pm, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    pm.eval()
    stats = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seconds": round(time.time() - t0, 1),
             "loss_first10": round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
             "loss_last10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4)}
    return pm, stats


def save_fp16(pm: Any, out_dir: Path) -> None:
    """Save the adapter with its LoRA tensors in fp16 (half the size; the evaluator upcasts)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = get_peft_model_state_dict(pm, save_embedding_layers=False)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in sorted(raw.items())}
    config = pm.peft_config["default"].to_dict()
    # PEFT keeps target_modules as a set (salted hash order); a sorted list keeps the file byte-stable.
    config = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in config.items()}
    config = {k: (v.value if hasattr(v, "value") else v) for k, v in config.items()}  # enums -> str
    config["inference_mode"] = True  # as PEFT's own save_pretrained writes it
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")
    save_file(state, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
