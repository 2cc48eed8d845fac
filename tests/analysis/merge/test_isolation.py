"""Isolation: cores, Jaccard, groups, and the merge, each checked against a dense re-computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from merge_factories import random_adapter

from analysis.adapters.model import DenseDelta, LowRankDelta
from analysis.isolation import column_energy, core_mask, core_overlap, row_energy
from analysis.merge import merge_adapters
from analysis.merge.claims import parse_groups

SHAPES = {"m0": (40, 30), "m1": (24, 30)}


def adapters(n: int = 3, rank: int = 3):  # noqa: ANN201
    return [random_adapter(f"t{i}", seed=i + 1, rank=rank, shapes=SHAPES) for i in range(n)]


def test_row_and_column_energy_from_factors_match_dense():
    d = adapters(1)[0].modules["m0"]
    W = d.dense(torch.float64)
    assert torch.allclose(row_energy(d), (W**2).sum(1)) and torch.allclose(column_energy(d), (W**2).sum(0))
    assert torch.allclose(row_energy(DenseDelta(W)), (W**2).sum(1))


def test_entry_core_is_the_top_fraction_by_magnitude():
    d = adapters(1)[0].modules["m0"]
    mask = core_mask(d, "entries", 0.05)
    W = d.dense(torch.float32).abs()
    k = int(np.ceil(0.05 * W.numel()))
    assert int(mask.sum()) == k and float(W[mask].min()) >= float(W[~mask].max())


def test_jaccard_pooled_over_modules_by_hand():
    ads = adapters(2)
    ov = core_overlap(ads, granularity="rows", p=0.25)
    inter = union = 0
    for m in SHAPES:
        a, b = (core_mask(x.modules[m], "rows", 0.25) for x in ads)
        inter += int((a & b).sum())
        union += int((a | b).sum())
    assert ov.jaccard[0, 1] == pytest.approx(inter / union) and ov.jaccard[0, 0] == pytest.approx(1.0)


def test_parse_groups():
    assert parse_groups("a,a,b", 3).tolist() == [0, 0, 1]
    assert parse_groups("", 3) is None


def dense_isolation(ads, module, granularity, p, groups, blend, policy="magnitude"):  # noqa: ANN001, ANN201
    """Independent dense route: per position, who claims it, and what the merged value is."""
    Ws = [a.modules[module].dense(torch.float64) for a in ads]
    if granularity == "rows":
        scores = [(W**2).sum(1, keepdim=True).expand_as(W) for W in Ws]
        masks = [core_mask(a.modules[module], "rows", p)[:, None].expand_as(W) for a, W in zip(ads, Ws)]
    else:
        scores = [W.abs() for W in Ws]
        masks = [core_mask(a.modules[module], "entries", p) for a in ads]
    out = sum(c * W for c, W in zip(blend, Ws))
    claims = sum(m.long() for m in masks)
    for pos in zip(*torch.nonzero(claims).T.tolist()):
        who = [i for i, m in enumerate(masks) if m[pos]]
        if len({groups[i] for i in who}) == 1:
            out[pos] = sum(Ws[i][pos] for i in who) / len(who)
        elif policy == "mean":
            out[pos] = sum(Ws[i][pos] for i in who) / len(who)
        else:
            out[pos] = Ws[max(who, key=lambda i: float(scores[i][pos]))][pos]
    return out


@pytest.mark.parametrize("policy", ["magnitude", "mean"])
def test_row_isolation_is_exactly_low_rank_and_equals_the_dense_masked_merge(policy: str):
    ads = adapters(3)
    res = merge_adapters(ads, "isolation", params={"granularity": "rows", "p": 0.3, "groups": "0,0,1",
                                                   "blend": "mean", "conflict": policy})
    for m in SHAPES:
        d = res.modules[m]
        assert isinstance(d, LowRankDelta) and d.rank <= 9
        expect = dense_isolation(ads, m, "rows", 0.3, [0, 0, 1], [1 / 3] * 3, policy)
        assert torch.allclose(d.dense(torch.float64), expect, atol=1e-10)
    assert res.info["groups"] == [0, 0, 1] and res.info["claims"]["conflicts"] > 0


def test_entry_isolation_transplants_cores_and_counts_conflicts():
    ads = adapters(3)
    res = merge_adapters(ads, "isolation", params={"granularity": "entries", "p": 0.1, "groups": "0,1,2",
                                                   "blend": "mean"})
    for m in SHAPES:
        expect = dense_isolation(ads, m, "entries", 0.1, [0, 1, 2], [1 / 3] * 3)
        assert torch.allclose(res.modules[m].dense(torch.float64), expect, atol=1e-5)
        # every sole-claimed core entry keeps its task's exact value
        W = res.modules[m].dense(torch.float32)
        for a in ads:
            mask = core_mask(a.modules[m], "entries", 0.1)
            kept = torch.isclose(W[mask], a.modules[m].dense(torch.float32)[mask]).float().mean()
            assert float(kept) > 0.8
    claims = res.info["claims"]
    assert claims["sole"] + claims["shared_in_group"] + claims["conflicts"] + claims["blended"] == claims["positions"]


def test_columns_granularity_is_low_rank():
    ads = adapters(2)
    res = merge_adapters(ads, "isolation", params={"granularity": "columns", "p": 0.2})
    assert all(isinstance(d, LowRankDelta) for d in res.modules.values())


def test_groups_from_jaccard_with_tau():
    a = adapters(1)[0]
    twin = random_adapter("twin", seed=1, rank=3, shapes=SHAPES)  # same cores as a
    other = random_adapter("other", seed=9, rank=3, shapes=SHAPES)
    res = merge_adapters([a, twin, other], "isolation", params={"granularity": "rows", "p": 0.1, "tau": 0.9})
    assert res.info["groups"][0] == res.info["groups"][1] != res.info["groups"][2]


def test_blend_sum_is_task_arithmetic_off_the_cores():
    ads = adapters(3)
    res = merge_adapters(ads, "isolation", params={"granularity": "rows", "p": 0.1, "groups": "0,1,2",
                                                   "blend": "sum"})
    for m in SHAPES:
        expect = dense_isolation(ads, m, "rows", 0.1, [0, 1, 2], [1.0] * 3)
        assert torch.allclose(res.modules[m].dense(torch.float64), expect, atol=1e-10)


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.5])
def test_lambda_scales_only_the_blend_rows(lam: float):
    """Independent dense route: blend coefficients lam * 1 (sum) off the cores, cores untouched."""
    ads = adapters(3)
    res = merge_adapters(ads, "isolation", params={"granularity": "rows", "p": 0.1, "groups": "0,1,2",
                                                   "blend": "sum", "lambda": lam})
    for m in SHAPES:
        expect = dense_isolation(ads, m, "rows", 0.1, [0, 1, 2], [lam] * 3)
        assert torch.allclose(res.modules[m].dense(torch.float64), expect, atol=1e-10)


def test_lambda_is_linear_in_the_non_core_part_entries():
    """merged(lam) = merged(0) + lam * (merged(1) - merged(0)); merged(0) is zero off the cores."""
    ads = adapters(3)
    base = {"granularity": "entries", "p": 0.1, "groups": "0,1,2", "blend": "mean"}
    W = {lam: merge_adapters(ads, "isolation", params={**base, "lambda": lam}).modules
         for lam in (0.0, 0.4, 1.0)}
    for m in SHAPES:
        w0, w4, w1 = (W[lam][m].dense(torch.float64) for lam in (0.0, 0.4, 1.0))
        assert torch.allclose(w4, w0 + 0.4 * (w1 - w0), atol=1e-6)
        claimed = torch.stack([core_mask(a.modules[m], "entries", 0.1) for a in ads]).any(0)
        assert float(w0[~claimed].abs().max()) == 0.0 and float((w1 - w0)[claimed].abs().max()) == 0.0
        assert float((w1 - w0)[~claimed].abs().max()) > 0.0


@pytest.mark.parametrize("groups", [[0, 1, 2, 3], [0, 0, 1, 1]])
@pytest.mark.parametrize("policy", ["magnitude", "mean"])
def test_claim_runs_give_the_dense_maps_values_and_counts(groups: list[int], policy: str) -> None:
    """analysis.merge.claims on K merged claims against dense (N, numel) masks through coefficient_maps."""
    from analysis.isolation import Core, claim_runs
    from analysis.merge.claims import coefficient_maps, merged_values, task_counts

    g = torch.Generator().manual_seed(4)
    numel, n = 400, 4
    values = torch.randn(n, numel, generator=g)  # (N, numel) each task's dW, flattened
    masks = torch.rand(n, numel, generator=g) < torch.tensor([0.2, 0.3, 0.1, 0.25])[:, None]  # overlapping cores
    cores = [Core(m.nonzero().squeeze(1).to(torch.int32), values[i][m], (20, 20)) for i, m in enumerate(masks)]
    runs = claim_runs(cores)
    claimed = masks.any(dim=0)
    assert runs.positions.tolist() == claimed.nonzero().squeeze(1).tolist()
    # merged values: the dense maps (no free position among the claimed ones) times the tasks' values
    M, stats = coefficient_maps(masks[:, claimed], (values * masks)[:, claimed].abs(), groups,
                                torch.zeros(n, dtype=torch.float64), policy)
    want = (M * values[:, claimed]).sum(dim=0)
    target, sole, shared, conflicts = merged_values(runs, groups, policy)
    assert torch.allclose(target, want, atol=1e-6) and (sole, shared, conflicts) == (
        stats.sole, stats.shared_in_group, stats.conflicts)
    # per-task counts, with input 2 at weight 0 (not live: its claims make no conflict for the others)
    live = np.array([True, True, False, True])
    merged_at = (want + 0.3 * torch.randn(want.shape, generator=g)).numpy()
    sizes, conf, kept = task_counts(runs, live, merged_at, 0.25)
    twice = masks[torch.from_numpy(live)].sum(dim=0) > 1  # (numel,)
    new = torch.zeros(numel)
    new[claimed] = torch.from_numpy(merged_at)
    ok = ((new - values).abs() <= 0.25 * values.abs()) & masks
    assert sizes.tolist() == masks.sum(dim=1).tolist()
    assert conf.tolist() == (masks & twice).sum(dim=1).tolist() and kept.tolist() == ok.sum(dim=1).tolist()


def test_task_cores_split_between_threads_are_the_cores_of_one_thread() -> None:
    from analysis.isolation import task_cores

    shapes = {f"layers.{i}.{k}": (24, 20) for i in range(5) for k in ("q", "v")}
    ads = [random_adapter(f"t{i}", rank=3, shapes=shapes, seed=i) for i in range(3)]
    steps: list[int] = []
    one = task_cores(ads, p=0.05)
    two = task_cores(ads, p=0.05, workers=3, progress=lambda done, total, m: steps.append(done))
    assert list(two) == list(one) == sorted(shapes)
    for m in one:
        for i in one[m]:
            assert torch.equal(one[m][i].index, two[m][i].index) and torch.equal(one[m][i].value, two[m][i].value)
    assert steps and steps == sorted(steps) and max(steps) <= len(shapes)  # reported from the caller's thread
