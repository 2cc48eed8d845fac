"""What one arm installs on the model and trains: LoRA blocks (row cores) or dense updates (entry cores).

`prepare_arm` computes, once per arm, the start (a merge of the inputs or nothing), the frozen positions
(true cores, as many random rows, or none) and the blocks; `Held` is what is installed while training
(`params`, the current `modules`, `remove`). Sequential isolation re-installs between stages
(`freeze_stage`): the rows a stage moved most are copied into a frozen block and masked out of the
trainable one, so they stay fixed for every later stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.consolidate.arms import Arm
from analysis.consolidate.blocks import BlockLinear, BlockSpec, install, trained_modules, uninstall
from analysis.consolidate.cores import core_rows, groups_of, isolation_start, row_jaccard, row_scores, saliency_rms
from analysis.consolidate.fullft import (
    DenseUpdateLinear,
    dense_modules,
    entry_start,
    install_dense,
    uninstall_dense,
    zero_start,
)
from analysis.isolation import row_energy, top_fraction


@dataclass
class Prepared:
    """An arm's start, frozen positions and blocks, before anything is installed."""

    specs: dict[str, list[BlockSpec]] = field(default_factory=dict)  # LoRA arms
    dense_starts: dict[str, torch.Tensor] = field(default_factory=dict)  # full arms: (n_out, n_in)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)  # (n_out,) rows or (n_out, n_in) entries
    start: dict[str, Delta] | None = None  # the merge training started from, as trained (float32)
    info: dict[str, Any] = field(default_factory=dict)  # groups, Jaccard


class Held:
    """The installed trainable update of one arm."""

    def __init__(self, model: nn.Module, prepared: Prepared, full: bool) -> None:
        self.model, self.full = model, full
        self.lora: dict[str, BlockLinear] = {} if full else install(model, prepared.specs)
        self.dense: dict[str, DenseUpdateLinear] = install_dense(model, prepared.dense_starts, prepared.frozen) \
            if full else {}

    def params(self) -> list[nn.Parameter]:
        mods = list(self.dense.values()) if self.full else list(self.lora.values())
        return [p for w in mods for p in w.parameters() if p.requires_grad]

    def free_parameters(self) -> int:
        """Trainable entries that can move: masked rows of B (LoRA) or masked entries (dense) excluded."""
        if self.full:
            return sum(int(w.keep.sum()) if w.keep is not None else w.P.numel() for w in self.dense.values())
        n = 0
        for w in self.lora.values():
            for i, (B, A) in enumerate(zip(w.Bs, w.As)):
                if B.requires_grad:
                    n += int(w.keep(i).sum()) * B.shape[1] + A.numel()
        return n

    def modules(self) -> dict[str, Delta]:
        return dense_modules(self.dense) if self.full else trained_modules(self.lora)

    def remove(self) -> None:
        if self.full:
            uninstall_dense(self.model, self.dense)
        else:
            uninstall(self.model, self.lora)


def fresh_block(n_out: int, n_in: int, rank: int, gen: torch.Generator, scale: float, keep: torch.Tensor | None
                ) -> BlockSpec:
    """PEFT's LoRA init: A kaiming-uniform (a = sqrt(5)), B zero, so training starts from the given start."""
    bound = 1.0 / math.sqrt(n_in)  # kaiming_uniform_(a=sqrt(5)) on (rank, n_in)
    A = (torch.rand(rank, n_in, generator=gen) * 2 - 1) * bound  # (r, n_in)
    return BlockSpec("fresh", torch.zeros(n_out, rank), A, trainable=True, scale=scale, keep=keep)


def random_rows(like: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """As many rows per module as `like` marks, drawn uniformly at random (seeded; modules in sorted order)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    out = {}
    for m in sorted(like):
        n_out, k = like[m].numel(), int(like[m].sum())
        mask = torch.zeros(n_out, dtype=torch.bool)
        mask[torch.randperm(n_out, generator=gen)[:k]] = True
        out[m] = mask
    return out


def prepare_arm(model: Any, tokenizer: Any, adapters: Sequence[Adapter], data_dir: str, cfg: Any, arm: Arm
                ) -> Prepared:
    """Start, frozen positions and blocks of `arm` for these adapters (see `analysis.consolidate.arms`)."""
    if arm.full:
        if arm.start == "entries":
            starts, frozen, info = entry_start(adapters, cfg.p, cfg.tau)
        else:
            starts, frozen, info = zero_start(adapters), {}, {}
        return Prepared(dense_starts=starts, frozen=frozen if arm.freeze == "cores" else {}, info=info,
                        start={m: _dense(s) for m, s in starts.items()} if arm.start == "entries" else None)
    rms = saliency_rms(model, tokenizer, adapters, data_dir) if cfg.cores == "saliency" else None
    scores = row_scores(adapters, cfg.cores, rms=rms)
    cores = core_rows(scores, cfg.p)
    prepared = Prepared(info={"groups": groups_of(row_jaccard(cores, len(adapters)), cfg.tau)})
    if arm.start == "rows":
        start, info = isolation_start(adapters, cores, scores, tau=cfg.tau)
        prepared.info = info
        # rounded to float32 once: the start IS what training holds and freezes
        prepared.start = {m: LowRankDelta(A=d.A.float(), B=(d.B * d.scale).float(), scale=1.0)  # type: ignore[union-attr]
                          for m, d in start.items()}
    union = {m: torch.stack(list(per.values())).any(dim=0) for m, per in cores.items()}  # (n_out,)
    if arm.freeze == "cores":
        prepared.frozen = union
    elif arm.freeze == "random":
        prepared.frozen = random_rows(union, cfg.seed)
    prepared.specs = lora_specs(adapters, cfg, prepared.start, prepared.frozen)
    return prepared


def _dense(W: torch.Tensor) -> Delta:
    from analysis.adapters.model import DenseDelta

    return DenseDelta(W=W.clone())


def input_rank(adapters: Sequence[Adapter], module: str) -> int:
    """R0 at a module: the sum of the inputs' ranks there (the row-isolation merge's rank)."""
    return sum(a.modules[module].rank for a in adapters if module in a.modules)


def lora_specs(adapters: Sequence[Adapter], cfg: Any, start: Mapping[str, Delta] | None,
               frozen: Mapping[str, torch.Tensor]) -> dict[str, list[BlockSpec]]:
    """The LoRA blocks of every target module (see `analysis.consolidate.train` for the construction)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    specs: dict[str, list[BlockSpec]] = {}
    for m in sorted(set().union(*(a.modules for a in adapters))):
        n_out, n_in = next(a.modules[m].shape for a in adapters if m in a.modules)
        if start is None:  # fresh arms: the same trainable count as start + fresh block when matched
            rank = cfg.rank + (input_rank(adapters, m) if cfg.match_params else 0)
            specs[m] = [fresh_block(n_out, n_in, rank, gen, cfg.lora_scale, None)]
            continue
        B0, A0 = start[m].factors(torch.float64)  # (n_out, R0), (R0, n_in)
        if m not in frozen:
            specs[m] = [BlockSpec("start", B0, A0, trainable=True),
                        fresh_block(n_out, n_in, cfg.rank, gen, cfg.lora_scale, None)]
            continue
        D = frozen[m].to(torch.float32)  # (n_out,)
        specs[m] = [BlockSpec("cores", B0, A0, trainable=False, keep=D),
                    BlockSpec("start", B0, A0, trainable=True, keep=1 - D),
                    fresh_block(n_out, n_in, cfg.rank, gen, cfg.lora_scale, 1 - D)]
    return specs


def freeze_stage(model: nn.Module, held: Held, before: Mapping[str, Delta], frozen: dict[str, torch.Tensor],
                 p: float, stage: int) -> Held:
    """After a stage: the top-p rows of what it changed join `frozen` (updated in place), held fixed from now.

    The trainable block is copied into a frozen block that keeps only the newly frozen rows, and the
    trainable block loses all frozen rows; every earlier frozen block is carried over unchanged. Rows are
    disjoint between frozen blocks, so each frozen row is held by exactly one block, bit for bit."""
    now = held.modules()
    specs: dict[str, list[BlockSpec]] = {}
    for m, w in held.lora.items():
        b_now, a_now = now[m].factors(torch.float64)  # (n_out, R), (R, n_in)
        b_old, a_old = before[m].factors(torch.float64)
        change = LowRankDelta(A=torch.cat([a_now, a_old]), B=torch.cat([b_now, -b_old], dim=1), scale=1.0)
        old = frozen.get(m, torch.zeros(w.base.out_features, dtype=torch.bool))
        new = top_fraction(row_energy(change), p) & ~old  # (n_out,)
        frozen[m] = old | new
        blocks = [BlockSpec(n, B, A, trainable=False, scale=s, keep=w.keep(i).reshape(-1))
                  for i, (n, B, A, s) in enumerate(zip(w.names, w.Bs, w.As, w.scales)) if not B.requires_grad]
        i = next(i for i, B in enumerate(w.Bs) if B.requires_grad)
        B, A, s = w.Bs[i].detach(), w.As[i].detach(), w.scales[i]
        blocks.append(BlockSpec(f"stage{stage}", B, A, trainable=False, scale=s,
                                keep=new.to(torch.float32) * w.keep(i).reshape(-1)))
        blocks.append(BlockSpec("fresh", B, A, trainable=True, scale=s, keep=(~frozen[m]).to(torch.float32)))
        specs[m] = blocks
    held.remove()
    return Held(model, Prepared(specs=specs), full=False)
