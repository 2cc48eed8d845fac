"""Consolidate N task adapters into one by a short mixed-task fine-tuning (CPI-FT, Wang, Liang & Peng 2025).

The arms (`analysis.consolidate.arms`) share the batch size, schedule shape (linear warm-up, cosine to 10%),
seed, data encoding, step budget and, per seed, the batch sequence. How row cores are frozen in the LoRA
arms: an EXACT FACTORED CONSTRUCTION, not masked gradients on a dense update. With D the frozen rows, the
update is
    dW = (D B0) A0  [frozen: the merge's rows in D]  +  ((1-D) B0') A0'  +  s ((1-D) B') A'
where B0' A0' start at the merge's factors and train, and B' A' is the fresh block. Rows in D receive exact
zeros from every trainable block, so they are bit-identical to the merge's, and the concatenated factors
ARE the exported LoRA: the adapter PEFT loads is the trained update with no re-factoring. The full arms
(`analysis.consolidate.fullft`) train a dense update with a gradient mask on entry cores, the paper's
setting, and export it as a delta (exact) and as a LoRA at `export_rank` (fidelity reported).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta
from analysis.consolidate.arms import STRATEGIES, arm_of
from analysis.consolidate.data import (
    Schedule,
    batch_stream,
    collate,
    encode_example,
    load_rows,
    split_stages,
    stage_steps,
)
from analysis.consolidate.fullft import frozen_entry_change, lora_export
from analysis.consolidate.held import Held, freeze_stage, prepare_arm
from analysis.errors import AtlasError

log = logging.getLogger(__name__)

__all__ = ["STRATEGIES", "ConsolidateConfig", "Consolidated", "consolidate"]
Progress = Callable[[int, int, float], None]  # (step done, total, loss)
Checkpoint = Callable[[int, Any], dict[str, Any]]  # (steps done, model as it is now) -> what to record


@dataclass(frozen=True)
class ConsolidateConfig:
    strategy: str
    steps: int
    rank: int = 16  # R: the fresh LoRA block (the fresh arms train rank R0 + R when match_params)
    batch_size: int = 8
    lr: float = 3e-3  # LoRA arms
    full_lr: float = 1e-4  # full arms (a dense update moves every entry by ~lr per AdamW step)
    warmup: int = 5
    seed: int = 0
    cores: str = "magnitude"  # magnitude | saliency (row cores of the LoRA arms)
    p: float = 0.01  # core fraction per task and module (the paper's 1%)
    tau: float = 0.1  # Jaccard threshold for task groups (the paper's default)
    max_grad_norm: float = 1.0
    lora_scale: float = 2.0  # alpha / r of the fresh block, as the sample adapters (alpha 16, r 8)
    match_params: bool = True  # fresh LoRA arms get rank R0 + R: as many trainable parameters as the merge arms
    stages: int = 3  # K task groups of the sequential arms
    export_rank: int = 64  # LoRA rank of the full arms' export

    def check(self) -> None:
        arm_of(self.strategy)
        if self.cores not in ("magnitude", "saliency"):
            raise AtlasError(f"cores '{self.cores}' is not one of magnitude, saliency")
        for name in ("steps", "rank", "batch_size", "stages", "export_rank"):
            if getattr(self, name) < 1:
                raise AtlasError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.seed < 0:
            raise AtlasError("warmup and seed must be at least 0")
        for name in ("lr", "full_lr", "max_grad_norm", "lora_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise AtlasError(f"{name.replace('_', ' ')} must be a finite number above 0, got {v}")
        if not (math.isfinite(self.p) and 0 < self.p <= 1):
            raise AtlasError(f"p must be in (0, 1], got {self.p}")
        if not (math.isfinite(self.tau) and 0 <= self.tau <= 1):
            raise AtlasError(f"tau must be in [0, 1], got {self.tau}")


@dataclass
class Consolidated:
    modules: dict[str, Delta]  # the trained update, exactly (LoRA arms: what is exported)
    record: dict[str, Any]  # loss curve, seconds, settings, groups, frozen-core check, parameter counts
    start: dict[str, Delta] | None  # the merge training started from (merge arms)
    frozen_rows: dict[str, torch.Tensor]  # module -> frozen rows (n_out,) or entries (n_out, n_in)
    lora: dict[str, Delta] | None = None  # full arms: the rank-`export_rank` LoRA of `modules`


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the answer tokens only; the vocabulary projection runs on those positions alone."""
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state  # (b, t, d)
    target = batch["labels"][:, 1:]  # (b, t-1)
    keep = target != -100  # (b, t-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def plan_stages(cfg: ConsolidateConfig, tasks: Sequence[str]) -> tuple[list[list[str]], list[int]]:
    if not arm_of(cfg.strategy).staged:
        return [list(tasks)], [cfg.steps]
    stages = split_stages(tasks, cfg.stages)
    if cfg.steps < len(stages):
        raise AtlasError(f"{cfg.steps} steps cannot be split over {len(stages)} stages")
    return stages, stage_steps(cfg.steps, len(stages))


def batch_digest(keys: Sequence[Sequence[tuple[str, int]]]) -> str:
    """sha256 of the (task, row) sequence: equal digests = the same batches in the same order."""
    return hashlib.sha256(json.dumps([[list(k) for k in b] for b in keys]).encode()).hexdigest()


def consolidate(model: Any, tokenizer: Any, adapters: Sequence[Adapter], data_dir: str, cfg: ConsolidateConfig, *,
                progress: Progress | None = None, checkpoints: Sequence[int] = (),
                on_checkpoint: Checkpoint | None = None) -> Consolidated:
    """Train one update for every task of `adapters` (task = adapter name) on `DIR/<task>/train.jsonl`.

    `on_checkpoint(step, model)` is called after each step in `checkpoints` (and its result recorded under
    `record["curve"]`), with the trained update installed and the model in eval mode: learning curves without
    exporting (e.g. `analysis.evaluation.Evaluator.nll({}, tasks)` measures the model as it is)."""
    cfg.check()
    arm = arm_of(cfg.strategy)
    tasks = [a.name for a in adapters]
    if len(set(tasks)) != len(tasks):
        raise AtlasError(f"adapter names must be distinct task names, got {', '.join(tasks)}")
    t0 = time.time()
    prepared = prepare_arm(model, tokenizer, adapters, data_dir, cfg, arm)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = {t: [encode_example(tokenizer, r["prompt"], r["answer"]) for r in load_rows(data_dir, t, "train")]
               for t in tasks}
    stages, budgets = plan_stages(cfg, tasks)
    prep_s = time.time() - t0
    log.info("%s: start, cores and data ready in %.0f s (%d stage(s))", cfg.strategy, prep_s, len(stages))
    torch.manual_seed(cfg.seed)
    held = Held(model, prepared, arm.full)
    frozen = dict(prepared.frozen)
    n_trainable, n_free = sum(p.numel() for p in held.params()), held.free_parameters()
    lr = cfg.full_lr if arm.full else cfg.lr
    losses: list[float] = []
    keys: list[list[tuple[str, int]]] = []
    curve: dict[str, Any] = {}
    held_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # staged: rows frozen so far and their values
    before: dict[str, Delta] = {}  # staged isolation: the update when the current stage began
    stream = batch_stream(encoded, stages, budgets, cfg.batch_size, cfg.seed)
    was_training = model.training
    t1 = time.time()
    try:
        model.train()
        for k, n in enumerate(budgets):
            if k > 0 and arm.freeze == "stage-cores":
                now = held.modules()
                held = freeze_stage(model, held, before, frozen, cfg.p, k)
                remember_rows(held_rows, now, frozen)
            before = held.modules() if arm.freeze == "stage-cores" else {}
            params = held.params()
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(n, lr, min(cfg.warmup, n)).factor)
            for _ in range(n):
                _label, batch, batch_keys = next(stream)
                loss = answer_loss(model, collate(batch, pad_id))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                losses.append(round(float(loss.detach()), 5))
                keys.append(batch_keys)
                if progress is not None:
                    progress(len(losses), cfg.steps, losses[-1])
                if on_checkpoint is not None and len(losses) in checkpoints:
                    model.eval()
                    curve[str(len(losses))] = on_checkpoint(len(losses), model)
                    model.train()
        train_s = time.time() - t1
        modules = held.modules()
    finally:
        held.remove()
        model.train(was_training)
    record = {"config": asdict(cfg), "tasks": tasks, "loss": losses,
              "stages": [{"tasks": s, "steps": n} for s, n in zip(stages, budgets)],
              "seconds": {"prepare": round(prep_s, 1), "train": round(train_s, 1)},
              "trainable_parameters": int(n_trainable), "free_parameters": int(n_free),
              "free_parameters_last_stage": int(held.free_parameters()),
              "groups": prepared.info.get("groups"), "batch_digest": batch_digest(keys), "curve": curve,
              "frozen_positions": int(sum(int(v.sum()) for v in frozen.values())),
              "export_rank": None if arm.full else max(d.rank for d in modules.values())}
    lora = None
    if arm.full:
        record["frozen_core_max_change"] = frozen_entry_change(modules, prepared.dense_starts, frozen) \
            if frozen else None
        lora, record["lora_export"] = lora_export(modules, cfg.export_rank)
        record["export_rank"] = cfg.export_rank
    else:
        if prepared.start is not None and frozen:
            remember_rows(held_rows, prepared.start, frozen)
        record["frozen_core_max_change"] = frozen_row_change(modules, held_rows) if frozen else None
    record["frozen_rows"] = record["frozen_positions"]  # earlier name, kept for stored results
    log.info("%s: %d steps in %.0f s, loss %.3f -> %.3f", cfg.strategy, cfg.steps, train_s,
             float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
    return Consolidated(modules=modules, record=record, start=prepared.start, frozen_rows=frozen, lora=lora)


def remember_rows(held_rows: dict[str, tuple[torch.Tensor, torch.Tensor]], values: dict[str, Delta],
                  frozen: dict[str, torch.Tensor]) -> None:
    """Record the values (float64) of rows frozen now and not before: what they must still be at the end.
    `held_rows[m]` = (frozen rows (n_out,) bool, their values (n_rows, n_in) in ascending row order)."""
    for m, rows in frozen.items():
        n_in = values[m].shape[1]
        old_rows, old_vals = held_rows.get(m, (torch.zeros_like(rows), torch.zeros(0, n_in, dtype=torch.float64)))
        new = rows & ~old_rows  # (n_out,)
        idx = torch.cat([old_rows.nonzero().squeeze(1), new.nonzero().squeeze(1)])  # (n_rows,)
        vals = torch.cat([old_vals, values[m].dense(torch.float64)[new]])  # (n_rows, n_in)
        held_rows[m] = (old_rows | new, vals[idx.argsort()])


def frozen_row_change(trained: dict[str, Delta], held_rows: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Largest |trained - value when frozen| over the frozen rows (0.0 when isolation held)."""
    worst = 0.0
    for m, (rows, vals) in held_rows.items():
        if bool(rows.any()):
            diff = trained[m].dense(torch.float64)[rows] - vals  # (n_rows, n_in)
            worst = max(worst, float(diff.abs().max()))
    return worst
