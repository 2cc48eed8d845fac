"""The export-rank curve (one cumulative sum per module) against the per-module definition, rank by rank."""
from __future__ import annotations

import math

import pytest
import torch

from analysis.merge.ops import ModuleSpectrum
from analysis.workflow.rank import Spectrum


def _by_definition(spec: Spectrum, rank: int) -> float:
    tot = sum(s.norm2 for s in spec.modules.values())
    tail = sum(s.relative_error(rank) ** 2 * s.norm2 for s in spec.modules.values())
    return math.sqrt(tail / tot)


def test_pooled_error_and_smallest_rank_follow_the_definition_at_every_rank() -> None:
    g = torch.Generator().manual_seed(3)
    modules = {}
    for i, (k, complete) in enumerate([(12, True), (30, False), (5, True), (0, True)]):
        values = torch.rand(k, generator=g, dtype=torch.float64).sort(descending=True).values * (i + 1)
        extra = 0.0 if complete else float(torch.rand(1, generator=g)) * 3.0  # energy beyond the values kept
        modules[f"m{i}"] = ModuleSpectrum(values, float((values**2).sum()) + extra, complete)
    spec = Spectrum(modules, cap=24)
    for r in range(0, 40):
        assert spec.error(r) == pytest.approx(_by_definition(spec, r), rel=1e-12, abs=1e-15)
    assert spec.error(None) == 0.0
    for target in (0.9, 0.5, 0.2, 0.05, 0.0):
        r, reached = spec.smallest_rank(target)
        if reached:
            assert _by_definition(spec, r) <= target + 1e-12 and (r == 1 or _by_definition(spec, r - 1) > target)
        else:
            assert r == 24 and all(_by_definition(spec, q) > target for q in range(1, 25))
