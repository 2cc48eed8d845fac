"""Capacity floor: a theorem we can test (random subspaces never beat it, tight frames attain it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.adapters.model import Adapter, LowRankDelta
from analysis.capacity import capacity_floor, capacity_report, module_capacity, stacked_basis_stats
from analysis.overlap import overlap_table


def _orth(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    return torch.from_numpy(np.linalg.qr(rng.standard_normal((n, k)))[0])  # (n, k)


def test_floor_formula() -> None:
    assert capacity_floor(4, 4, 64) == 0.0  # 16 dims of 64: orthogonal is possible
    assert capacity_floor(8, 4, 16) == pytest.approx((32 / 16 - 1) / 7)
    assert capacity_floor(1, 8, 4) == 0.0


@given(seed=st.integers(0, 2**31), d=st.integers(4, 24), r=st.integers(1, 4), n=st.integers(2, 12))
@settings(max_examples=40, deadline=None)
def test_random_subspaces_never_beat_the_floor(seed: int, d: int, r: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    r = min(r, d)
    bases = [_orth(rng, d, r) for _ in range(n)]
    pair, union_sv = stacked_basis_stats(bases)
    row = module_capacity("m", d, [r] * n, pair, union_sv)
    assert row["mean_overlap"] >= row["floor"] - 1e-12
    assert row["union_rank"] == min(d, n * r)  # generic subspaces fill the space
    # pair overlaps against a direct computation
    direct = sum(float(np.linalg.norm(bases[i].numpy().T @ bases[j].numpy()) ** 2)
                 for i in range(n) for j in range(n) if i != j) / (n * (n - 1) * r)
    assert row["mean_overlap"] == pytest.approx(direct, rel=1e-10, abs=1e-14)


def test_tight_frame_attains_the_floor_and_orthogonal_blocks_fit() -> None:
    rng = np.random.default_rng(0)
    d, r = 8, 2
    frames = [_orth(rng, d, d), _orth(rng, d, d)]  # two orthonormal bases of R^8, split into rank-2 blocks
    bases = [f[:, k:k + r] for f in frames for k in range(0, d, r)]  # N = 8
    row = module_capacity("m", d, [r] * len(bases), *stacked_basis_stats(bases))
    assert row["floor"] == pytest.approx((8 * 2 / 8 - 1) / 7)
    assert row["mean_overlap"] == pytest.approx(row["floor"], rel=1e-10)
    assert row["union_rank"] == d and row["fits_more"] == 0
    half = module_capacity("m", d, [r] * 2, *stacked_basis_stats(bases[:2]))  # orthogonal blocks of one frame
    assert half["mean_overlap"] == pytest.approx(0.0, abs=1e-12) and half["union_rank"] == 4 and half["fits_more"] == 2
    assert half["union_effective_rank"] == pytest.approx(4.0)
    same = module_capacity("m", d, [r] * 3, *stacked_basis_stats([bases[0]] * 3))
    assert same["union_rank"] == 2 and same["union_effective_rank"] == pytest.approx(2.0)


def test_report_from_adapters_equals_report_from_table() -> None:
    rng = np.random.default_rng(1)
    def lora(r: int) -> LowRankDelta:
        return LowRankDelta(A=torch.from_numpy(rng.standard_normal((r, 10))),
                            B=torch.from_numpy(rng.standard_normal((12, r))), scale=0.5)
    adapters = [Adapter(name=f"a{i}", path=Path("."), format="peft", base_model=None, config={},
                        modules={"layers.0.q": lora(3), "layers.0.v": lora(2 + i)}) for i in range(5)]
    direct = capacity_report(adapters)
    via_table = capacity_report(overlap_table(adapters))
    assert [row["module"] for row in direct] == ["layers.0.q", "layers.0.v"]
    for a, b in zip(direct, via_table):
        assert a["union_rank"] == b["union_rank"] == min(12, a["sum_rank"])
        assert a["mean_overlap"] == pytest.approx(b["mean_overlap"], rel=1e-9)
        assert a["mean_overlap"] >= a["floor"]
    assert direct[0]["floor"] == pytest.approx((15 / 12 - 1) / 4)
    assert capacity_report(overlap_table(adapters), modules_regex=r"\.v$")[0]["module"] == "layers.0.v"
