"""Data-free merge preview: every number recomputed densely, and the identity merge as a fixed point."""
from __future__ import annotations

import math

import pytest
import torch
from merge_factories import random_adapter

from analysis.isolation import core_mask, task_cores
from analysis.merge import merge_adapters
from analysis.preview import preview_merge

SHAPES = {"m0": (20, 16), "m1": (12, 16)}


def trio():  # noqa: ANN201
    return [random_adapter(f"t{i}", seed=i + 1, rank=3, shapes=SHAPES) for i in range(3)]


def test_identity_merge_is_perfect():
    a = trio()[0]
    pv = preview_merge([a], merge_adapters([a], "linear").modules)
    s = pv["per_task"]["t0"]
    assert s["core_retention"] == 1.0 and s["interference"] < 1e-12 and s["cosine"] == pytest.approx(1.0)
    assert s["conflicts"] == 0 and pv["export"]["relative_error"] == 0.0


def test_metrics_match_dense_recomputation():
    ads = trio()
    merged = merge_adapters(ads, "ties", params={"density": 0.5}).modules
    pv = preview_merge(ads, merged, rank=2, p=0.1, tol=0.25)
    t = ads[1]
    num2 = den2 = inner = n_t = n_m = 0.0
    core = kept = conflicts = 0
    for m in SHAPES:
        # the preview describes the adapter written: the best rank-2 approximation of the merge (dense SVD here)
        U2, S2, Vh2 = torch.linalg.svd(merged[m].dense(torch.float64))
        W, Wm = t.modules[m].dense(torch.float64), (U2[:, :2] * S2[:2]) @ Vh2[:2]
        U, S, Vh = torch.linalg.svd(W)
        V = Vh[:3].T  # (16, 3): rank-3 update
        num2 += float(((Wm - W) @ V).pow(2).sum())
        den2 += float((W @ V).pow(2).sum())
        inner += float((W * Wm).sum())
        n_t += float(W.pow(2).sum())
        n_m += float(Wm.pow(2).sum())
        mask = core_mask(t.modules[m], "entries", 0.1)
        core += int(mask.sum())
        kept += int(((Wm - W).abs() <= 0.25 * W.abs())[mask].sum())
        others = core_mask(ads[0].modules[m], "entries", 0.1) | core_mask(ads[2].modules[m], "entries", 0.1)
        conflicts += int((mask & others).sum())
    s = pv["per_task"]["t1"]
    assert s["interference"] == pytest.approx(math.sqrt(num2 / den2), rel=1e-6)
    assert s["cosine"] == pytest.approx(inner / math.sqrt(n_t * n_m), rel=1e-6)
    assert s["core_retention"] == pytest.approx(kept / core) and s["conflicts"] == conflicts
    # export fidelity: pooled error of the best rank-2 approximations, dense SVD route
    err2 = tot2 = 0.0
    for m in SHAPES:
        S = torch.linalg.svdvals(merged[m].dense(torch.float64))
        err2 += float(S[2:].pow(2).sum())
        tot2 += float(S.pow(2).sum())
    assert pv["export"]["relative_error"] == pytest.approx(math.sqrt(err2 / tot2), rel=1e-6)


def test_precomputed_cores_give_the_same_preview():
    ads = trio()
    merged = merge_adapters(ads, "linear").modules
    a = preview_merge(ads, merged, granularity="rows", p=0.2)
    b = preview_merge(ads, merged, granularity="rows", p=0.2, cores=task_cores(ads, granularity="rows", p=0.2))
    assert a["per_task"] == b["per_task"]


def test_dense_result_without_rank_is_flagged():
    ads = trio()
    pv = preview_merge(ads, merge_adapters(ads, "ties").modules)
    assert pv["export"]["needs_rank"] is True and pv["export"]["relative_error"] is None


def test_isolation_keeps_cores_better_than_the_mean():
    ads = trio()
    iso = preview_merge(ads, merge_adapters(ads, "isolation", params={"p": 0.05}).modules, p=0.05)
    mean = preview_merge(ads, merge_adapters(ads, "linear").modules, p=0.05)
    for name in ("t0", "t1", "t2"):
        assert iso["per_task"][name]["core_retention"] > mean["per_task"][name]["core_retention"]
