"""Retention: how much of each task's own score a merge keeps, on the accuracy and on the NLL scale.

- accuracy retention = merged accuracy / own accuracy. A task whose own adapter scores 0 has no defined
  retention: `retention` returns None for it, and `mean_retention` leaves it out of the mean and names it.
- NLL retention = (NLL_base - NLL_merged) / (NLL_base - NLL_own): the share of the adapter's own NLL gain
  over the base model that the merge keeps (1 = all of it, 0 = no better than the base, < 0 = worse than
  the base). A task whose own adapter does not improve on the base has nothing to lose: None.
"""
from __future__ import annotations

from typing import Mapping


def retention(acc: Mapping[str, float], own: Mapping[str, float]) -> dict[str, float | None]:
    """acc / own per task; None where the own adapter scores 0 (undefined)."""
    return {t: (acc[t] / own[t] if own.get(t) else None) for t in acc}


def mean_retention(ret: Mapping[str, float | None]) -> tuple[float | None, list[str]]:
    """(mean over the defined tasks, tasks left out because their retention is undefined)."""
    vals = [v for v in ret.values() if v is not None]
    left_out = [t for t, v in ret.items() if v is None]
    return (sum(vals) / len(vals) if vals else None), left_out


def nll_retention(merged: Mapping[str, float], own: Mapping[str, float], base: Mapping[str, float]
                  ) -> dict[str, float | None]:
    """(base - merged) / (base - own) per task; None where the own adapter is no better than the base."""
    out: dict[str, float | None] = {}
    for t, m in merged.items():
        gain = base[t] - own[t]
        out[t] = (base[t] - m) / gain if gain > 0 else None
    return out
