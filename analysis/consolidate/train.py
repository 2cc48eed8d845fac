"""Consolidate N task adapters into one by a short mixed-task fine-tuning (CPI-FT, Wang, Liang & Peng 2025).

Strategies, all with the same batch size, learning-rate schedule (5 warmup steps, cosine to 10% over the
whole budget), seed, data encoding and step budget; all train the same fresh rank-R LoRA block:
- `multitask`: only the fresh rank-R LoRA, on the task mix (the paper's baseline).
- `sequential`: the same LoRA, the budget split over the task groups (connected components of core Jaccard
  >= tau), trained one group after another (the paper's multi-stage baseline), nothing isolated.
- `merge-then-tune`: start from the row-isolation merge (its factors trainable) plus the fresh block; nothing
  frozen (the ablation that tells whether freezing is what helps).
- `isolation`: the same start and fresh block, but every task's core rows are frozen.

How the cores are frozen: an EXACT FACTORED CONSTRUCTION for row cores, not masked gradients on a dense
update. With D the union of the tasks' core rows, the update is
    dW = (D B0) A0  [frozen: the merge's core rows]  +  ((1-D) B0') A0'  +  s ((1-D) B') A'
where B0' A0' start at the merge's factors and train, and B' A' is the fresh block. Rows in D receive exact
zeros from every trainable block, so they are bit-identical to the merge's, and the concatenated factors
ARE the exported LoRA (rank 2 R0 + R, R0 the merge's rank): the adapter PEFT loads is the trained update with
no re-factoring. The dense alternative (entry cores, masked gradients on a dense dW, then an SVD to rank R)
would blur the very entries it froze when re-factored; rows keep the isolation exact end to end.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.consolidate.blocks import BlockSpec, install, trainable_parameters, trained_modules, uninstall
from analysis.consolidate.cores import core_rows, groups_of, isolation_start, row_jaccard, row_scores, saliency_rms
from analysis.consolidate.data import Schedule, batch_stream, collate, encode_example, load_rows, stage_steps
from analysis.errors import AtlasError

log = logging.getLogger(__name__)

STRATEGIES = ("isolation", "multitask", "sequential", "merge-then-tune")
Progress = Callable[[int, int, float], None]  # (step done, total, loss)


@dataclass(frozen=True)
class ConsolidateConfig:
    strategy: str
    steps: int
    rank: int = 16
    batch_size: int = 8
    lr: float = 3e-3
    warmup: int = 5
    seed: int = 0
    cores: str = "magnitude"  # magnitude | saliency
    p: float = 0.01  # core rows per task and module (the paper's 1%)
    tau: float = 0.1  # Jaccard threshold for task groups (the paper's default)
    max_grad_norm: float = 1.0
    lora_scale: float = 2.0  # alpha / r of the fresh block, as the sample adapters (alpha 16, r 8)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise AtlasError(f"strategy '{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        if self.cores not in ("magnitude", "saliency"):
            raise AtlasError(f"cores '{self.cores}' is not one of magnitude, saliency")
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1:
            raise AtlasError("steps, rank and batch size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (math.isfinite(self.p) and 0 < self.p <= 1):
            raise AtlasError(f"learning rate must be finite and above 0 (got {self.lr}), p in (0, 1] (got {self.p})")


@dataclass
class Consolidated:
    modules: dict[str, Delta]  # the trained update, exactly what is exported
    record: dict[str, Any]  # loss curve, seconds, settings, groups, frozen-core check
    start: dict[str, Delta] | None  # the merge training started from (isolation / merge-then-tune)
    frozen_rows: dict[str, torch.Tensor]  # module -> (n_out,) bool, the rows kept frozen (isolation)


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the answer tokens only; the vocabulary projection runs on those positions alone."""
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state  # (b, t, d)
    target = batch["labels"][:, 1:]  # (b, t-1)
    keep = target != -100  # (b, t-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def fresh_block(n_out: int, n_in: int, rank: int, gen: torch.Generator, scale: float, keep: torch.Tensor | None
                ) -> BlockSpec:
    """PEFT's LoRA init: A kaiming-uniform (a = sqrt(5)), B zero, so training starts from the given start."""
    bound = 1.0 / math.sqrt(n_in)  # kaiming_uniform_(a=sqrt(5)) on (rank, n_in)
    A = (torch.rand(rank, n_in, generator=gen) * 2 - 1) * bound  # (r, n_in)
    return BlockSpec("fresh", torch.zeros(n_out, rank), A, trainable=True, scale=scale, keep=keep)


def block_specs(adapters: Sequence[Adapter], cfg: ConsolidateConfig, start: Mapping[str, Delta] | None,
                frozen: Mapping[str, torch.Tensor]) -> dict[str, list[BlockSpec]]:
    """The blocks of every target module for the chosen strategy (see the module docstring)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    specs: dict[str, list[BlockSpec]] = {}
    for m in sorted(set().union(*(a.modules for a in adapters))):
        n_out, n_in = next(a.modules[m].shape for a in adapters if m in a.modules)
        if cfg.strategy in ("multitask", "sequential"):
            specs[m] = [fresh_block(n_out, n_in, cfg.rank, gen, cfg.lora_scale, None)]
            continue
        B0, A0 = start[m].factors(torch.float64)  # type: ignore[index, union-attr]  # (n_out, R0), (R0, n_in)
        if cfg.strategy == "merge-then-tune":
            specs[m] = [BlockSpec("start", B0, A0, trainable=True),
                        fresh_block(n_out, n_in, cfg.rank, gen, cfg.lora_scale, None)]
            continue
        D = frozen[m].to(torch.float32)  # (n_out,)
        specs[m] = [BlockSpec("cores", B0, A0, trainable=False, keep=D),
                    BlockSpec("start", B0, A0, trainable=True, keep=1 - D),
                    fresh_block(n_out, n_in, cfg.rank, gen, cfg.lora_scale, 1 - D)]
    return specs


def stages_for(cfg: ConsolidateConfig, tasks: Sequence[str], groups: Sequence[int]) -> tuple[list[list[str]], list[int]]:
    if cfg.strategy != "sequential":
        return [list(tasks)], [cfg.steps]
    labels = sorted(set(groups))
    stages = [[t for t, g in zip(tasks, groups) if g == lab] for lab in labels]
    return stages, stage_steps(cfg.steps, len(stages))


def consolidate(model: Any, tokenizer: Any, adapters: Sequence[Adapter], data_dir: str, cfg: ConsolidateConfig, *,
                progress: Progress | None = None) -> Consolidated:
    """Train one update for every task of `adapters` (task = adapter name) on `DIR/<task>/train.jsonl`."""
    cfg.check()
    tasks = [a.name for a in adapters]
    if len(set(tasks)) != len(tasks):
        raise AtlasError(f"adapter names must be distinct task names, got {', '.join(tasks)}")
    t0 = time.time()
    # cores and the start
    rms = saliency_rms(model, tokenizer, adapters, data_dir) if cfg.cores == "saliency" else None
    scores = row_scores(adapters, cfg.cores, rms=rms)
    cores = core_rows(scores, cfg.p)
    needs_start = cfg.strategy in ("isolation", "merge-then-tune")
    start, info = isolation_start(adapters, cores, scores, tau=cfg.tau) if needs_start else (None, {})
    if start is not None:  # rounded to float32 once: the start IS what training holds and freezes
        start = {m: LowRankDelta(A=d.A.float(), B=(d.B * d.scale).float(), scale=1.0) for m, d in start.items()}  # type: ignore[union-attr]
    if not needs_start:
        info = {"groups": groups_of(row_jaccard(cores, len(adapters)), cfg.tau)}
    frozen = {m: torch.stack(list(per.values())).any(dim=0) for m, per in cores.items()}  # (n_out,) union of cores
    if cfg.strategy != "isolation":
        frozen = {}
    specs = block_specs(adapters, cfg, start, frozen)
    # data
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = {t: [encode_example(tokenizer, r["prompt"], r["answer"]) for r in load_rows(data_dir, t, "train")]
               for t in tasks}
    stages, budgets = stages_for(cfg, tasks, info.get("groups", [0] * len(tasks)))
    prep_s = time.time() - t0
    log.info("%s: cores, start and data ready in %.0f s (%d stage(s))", cfg.strategy, prep_s, len(stages))
    # train
    torch.manual_seed(cfg.seed)
    installed = install(model, specs)
    losses: list[float] = []
    stage_of_step: list[str] = []
    try:
        params = trainable_parameters(installed)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        schedule = Schedule(cfg.steps, cfg.lr, cfg.warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
        was_training = model.training
        model.train()
        t1 = time.time()
        for step, (label, batch) in enumerate(batch_stream(encoded, stages, budgets, cfg.batch_size, cfg.seed)):
            loss = answer_loss(model, collate(batch, pad_id))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(round(float(loss.detach()), 5))
            stage_of_step.append(label)
            if progress is not None:
                progress(step + 1, cfg.steps, losses[-1])
        train_s = time.time() - t1
        model.train(was_training)
        modules = trained_modules(installed)
    finally:
        uninstall(model, installed)
    n_trainable = sum(p.numel() for p in params)
    record = {"config": asdict(cfg), "tasks": tasks, "loss": losses,
              "stages": [{"tasks": s, "steps": n} for s, n in zip(stages, budgets)],
              "seconds": {"prepare": round(prep_s, 1), "train": round(train_s, 1)},
              "trainable_parameters": int(n_trainable), "groups": info.get("groups"),
              "frozen_rows": int(sum(int(v.sum()) for v in frozen.values())),
              "export_rank": max(d.rank for d in modules.values()),
              "frozen_core_max_change": frozen_core_change(modules, start, frozen) if frozen else None}
    log.info("%s: %d steps in %.0f s, loss %.3f -> %.3f", cfg.strategy, cfg.steps, train_s,
             float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
    return Consolidated(modules=modules, record=record, start=start, frozen_rows=frozen)


def frozen_core_change(trained: Mapping[str, Delta], start: Mapping[str, Delta] | None,
                       frozen: Mapping[str, torch.Tensor]) -> float:
    """Largest |dW_trained - dW_start| over the frozen rows (0.0 when isolation held)."""
    worst = 0.0
    for m, rows in frozen.items():
        if start is None or not bool(rows.any()):
            continue
        diff = trained[m].dense(torch.float64)[rows] - start[m].dense(torch.float64)[rows]  # (n_rows, n_in)
        worst = max(worst, float(diff.abs().max()))
    return worst
