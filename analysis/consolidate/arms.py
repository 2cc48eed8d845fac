"""The arms of the consolidation experiment: one declaration each, looked up by name (`--strategy`).

Every arm shares the data encoding, batch size, learning-rate schedule shape, seed, step budget and, per
seed, the batch sequence (`analysis.consolidate.data.batch_stream`); they differ only in what trains and
what is frozen:

| arm                    | trainable                                   | start                 | frozen                   |
|------------------------|---------------------------------------------|-----------------------|--------------------------|
| multitask              | fresh LoRA, rank R0 + R                     | base                  | nothing                  |
| merge-then-tune        | merge factors (rank R0) + fresh LoRA R      | row-isolation merge   | nothing                  |
| isolation              | the same                                    | row-isolation merge   | union of core rows       |
| isolation-random       | the same                                    | row-isolation merge   | as many random rows      |
| sequential             | fresh LoRA, rank R0 + R, K stages           | base                  | nothing                  |
| sequential-isolation   | the same                                    | base                  | each stage's core rows   |
| full-multitask         | dense dW of every targeted weight           | base                  | nothing                  |
| full-merge-then-tune   | dense dW                                    | entry-isolation merge | nothing                  |
| full-isolation         | dense dW                                    | entry-isolation merge | union of core entries    |

R0 is the sum of the input adapters' ranks at a module (the merge's rank), so the LoRA arms train the same
number of parameters (`match_params`); the full arms train every entry of the targeted weights, the
paper's setting, and are compared with each other. Sequential arms cut the tasks into K consecutive groups
(`split_stages`), each stage with its own warm-up, cosine schedule and fresh optimizer state; with
isolation, the top-p rows of what a stage learned are frozen for every later stage (CPI-FT's claim that
scheduling without isolation forgets, tested as a paired contrast).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str
    start: str  # "fresh" (base) | "rows" (row-isolation merge of the inputs) | "entries" (entry-isolation merge)
    freeze: str  # "none" | "cores" | "random" | "stage-cores"
    full: bool = False  # a dense update per targeted weight (full fine-tuning) instead of LoRA blocks
    staged: bool = False  # K stages of task groups, one after another
    help: str = ""


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("multitask", "fresh", "none", help="a fresh LoRA on the task mix (the paper's baseline)"),
    Arm("merge-then-tune", "rows", "none", help="start from the row-isolation merge, nothing frozen (ablation)"),
    Arm("isolation", "rows", "cores", help="start from the merge, every task's core rows frozen (CPI-FT, LoRA)"),
    Arm("isolation-random", "rows", "random", help="as isolation, but as many RANDOM rows frozen (seeded)"),
    Arm("sequential", "fresh", "none", staged=True, help="K task groups one after another, nothing frozen"),
    Arm("sequential-isolation", "fresh", "stage-cores", staged=True,
        help="K groups one after another, each stage's core rows frozen for the later stages"),
    Arm("full-multitask", "fresh", "none", full=True, help="full fine-tuning of the targeted weights on the mix"),
    Arm("full-merge-then-tune", "entries", "none", full=True,
        help="full fine-tuning from the entry-isolation merge, nothing frozen"),
    Arm("full-isolation", "entries", "cores", full=True,
        help="full fine-tuning from the entry-isolation merge, core entries frozen by a gradient mask (the paper)"),
]}
STRATEGIES = tuple(ARMS)


def arm_of(name: str) -> Arm:
    from analysis.errors import AtlasError

    if name not in ARMS:
        raise AtlasError(f"strategy '{name}' is not one of {', '.join(STRATEGIES)}")
    return ARMS[name]
