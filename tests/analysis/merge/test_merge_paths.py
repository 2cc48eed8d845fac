"""The fast paths against the plain ones: sparse cores, the structured isolation merge, the rank-R export,
spectra reused by the preview, and memory checked structurally (what is alive), never by timing."""
from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_factories import random_adapter

import analysis.isolation as iso
import analysis.merge.sparsify as sparsify
from analysis.adapters.model import DenseDelta, LowRankDelta
from analysis.isolation import core_mask, task_cores, top_indices
from analysis.linalg import GRAM_SIDE
from analysis.merge import merge_adapters
from analysis.merge.structured import SparsePlusLowRank, gather
from analysis.preview import fidelity_curve, preview_merge
from analysis.threads import bounded_threads

FAST = settings(max_examples=30, deadline=None)
SHAPES = {"m0": (40, 30), "m1": (24, 30)}


def trio(shapes=SHAPES, rank=3):  # noqa: ANN001, ANN201
    return [random_adapter(f"t{i}", seed=i + 1, rank=rank, shapes=shapes) for i in range(3)]


@given(n=st.integers(1, 300_000), frac=st.floats(1e-4, 0.5), seed=st.integers(0, 2**20))
@FAST
def test_top_indices_selects_exactly_the_k_largest(n: int, frac: float, seed: int):
    x = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, int(frac * n))
    got = top_indices(x, k)
    assert got.numel() == k and bool((got[1:] > got[:-1]).all())  # sorted, distinct
    assert torch.equal(x[got].sort().values, torch.topk(x, k).values.sort().values)


@given(seed=st.integers(0, 2**20), n_out=st.integers(2, 30), n_in=st.integers(2, 30), r=st.integers(1, 5),
       nnz=st.integers(0, 60))
@FAST
def test_sparse_plus_lowrank_factored_equals_dense(seed: int, n_out: int, n_in: int, r: int, nnz: int):
    g = torch.Generator().manual_seed(seed)
    base = LowRankDelta(A=torch.randn(r, n_in, generator=g), B=torch.randn(n_out, r, generator=g), scale=0.7)
    pos = torch.randperm(n_out * n_in, generator=g)[: min(nnz, n_out * n_in)].sort().values
    vals = torch.randn(pos.numel(), generator=g, dtype=torch.float64)
    op = SparsePlusLowRank(base, pos, vals)
    W = base.dense(torch.float64)
    W.view(-1)[pos] = vals
    assert torch.allclose(op.dense(torch.float64), W, atol=1e-6)
    assert op.norm2() == pytest.approx(float((W**2).sum()), rel=1e-6, abs=1e-9)
    matmul, rmatmul = op.operator()
    X, Y = torch.randn(n_in, 3, generator=g), torch.randn(n_out, 3, generator=g)
    assert torch.allclose(matmul(X).double(), W @ X.double(), atol=1e-4)
    assert torch.allclose(rmatmul(Y).double(), W.T @ Y.double(), atol=1e-4)
    assert torch.allclose(gather(base, pos), base.dense(torch.float64).reshape(-1)[pos], atol=1e-9)


def test_sparse_cores_are_the_dense_masks():
    ads = trio()
    for granularity in ("entries", "rows", "columns"):
        cores = task_cores(ads, granularity=granularity, p=0.1)
        for m in SHAPES:
            for i, a in enumerate(ads):
                assert torch.equal(cores[m][i].mask(), core_mask(a.modules[m], granularity, 0.1))
        if granularity == "entries":  # the stored value is the task's own dW there
            c = cores["m0"][0]
            assert torch.allclose(c.value.double(), ads[0].modules["m0"].dense(torch.float64).reshape(-1)[c.positions])


def test_entry_isolation_at_a_rank_is_the_truncated_exact_merge():
    ads = trio(shapes={"big": (96, 80)}, rank=4)
    exact = merge_adapters(ads, "isolation", params={"p": 0.05})
    W = exact.modules["big"].dense(torch.float64)
    assert isinstance(exact.modules["big"], DenseDelta)
    res = merge_adapters(ads, "isolation", params={"p": 0.05}, rank=6)
    d, spec = res.modules["big"], res.spectra["big"]
    S = torch.linalg.svdvals(W)
    opt2 = float((S[6:] ** 2).sum())
    err2 = float(((d.dense(torch.float64) - W) ** 2).sum())
    assert isinstance(d, LowRankDelta) and d.rank == 6
    assert err2 <= 1.02 * opt2 + 1e-5 * float((S**2).sum())
    assert spec.norm2 == pytest.approx(float((S**2).sum()), rel=1e-5)
    assert spec.relative_error(6) == pytest.approx(math.sqrt(err2 / spec.norm2), rel=1e-3)


class DenseCounter:
    """Counts every dense (n_out, n_in) module formed from a LowRankDelta and how many are alive at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.alive: set[int] = set()
        self.peak = 0
        real_dense, real_into = LowRankDelta.dense, iso.dense_into

        def track(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in self.alive:
                self.alive.add(id(t))
                weakref.finalize(t, self.alive.discard, id(t))
            self.peak = max(self.peak, len(self.alive))
            return t

        def dense(d: LowRankDelta, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            self.calls += 1
            return track(real_dense(d, dtype))

        def dense_into(d, buffer):  # noqa: ANN001, ANN202
            self.calls += 1
            return track(real_into(d, buffer))

        real_stacked = sparsify.stacked_dense

        def stacked_dense(deltas):  # noqa: ANN001, ANN202 - TIES forms its N inputs in one batched GEMM
            self.calls += len(deltas)
            return track(real_stacked(deltas))

        monkeypatch.setattr(LowRankDelta, "dense", dense)
        monkeypatch.setattr(iso, "dense_into", dense_into)
        monkeypatch.setattr(sparsify, "stacked_dense", stacked_dense)
        self.alive_between: list[int] = []

    def progress(self, done: int, total: int, module: str) -> None:
        """A merge progress callback: how many dense modules are still alive after each finished module."""
        gc.collect()
        self.alive_between.append(len(self.alive))


def test_entry_isolation_densifies_each_input_once_per_module_and_streams(monkeypatch: pytest.MonkeyPatch):
    shapes = {f"layers.{i}.q": (GRAM_SIDE + 40, GRAM_SIDE + 8) for i in range(4)}  # operator route, not dense
    ads = trio(shapes=shapes)
    counter = DenseCounter(monkeypatch)
    res = merge_adapters(ads, "isolation", params={"p": 0.05}, rank=4, progress=counter.progress)
    assert counter.calls == len(ads) * len(shapes)  # one dense pass: each input once per module
    assert counter.peak <= 1  # one reused buffer: never two dense modules alive
    assert counter.alive_between == [0] * len(shapes)  # nothing dense survives a finished module
    assert all(isinstance(d, LowRankDelta) and d.rank == 4 for d in res.modules.values())
    pv = preview_merge(ads, res.modules, rank=4, p=0.05, cores=res.cores, spectra=res.spectra)
    assert counter.calls == len(ads) * len(shapes)  # the preview reuses the merge's cores: no new dense pass
    assert pv["export"]["rank"] == 4 and 0.0 < pv["export"]["relative_error"] < 1.0


def test_ties_with_a_rank_streams_module_by_module(monkeypatch: pytest.MonkeyPatch):
    shapes = {f"layers.{i}.q": (GRAM_SIDE + 40, GRAM_SIDE + 8) for i in range(4)}
    ads = trio(shapes=shapes)
    counter = DenseCounter(monkeypatch)
    merge_adapters(ads, "ties", rank=4, progress=counter.progress)
    assert counter.calls == len(ads) * len(shapes)  # each input densified once per module
    assert counter.peak <= len(ads) and counter.alive_between == [0] * len(shapes)


def test_preview_spectra_give_the_fidelity_of_any_rank_without_a_new_preview():
    ads = trio(shapes={"big": (96, 80)}, rank=4)
    exact = merge_adapters(ads, "ties").modules
    pv = preview_merge(ads, exact, rank=10, p=0.05)
    spec = pv["export"]["spectra"]["big"]
    S = torch.linalg.svdvals(exact["big"].dense(torch.float64))
    ranks = [1, 3, 5, 10]
    expect = [math.sqrt(float((S[r:] ** 2).sum()) / float((S**2).sum())) for r in ranks]
    got = fidelity_curve(spec["values"], ranks, norm2=spec["norm2"])
    assert got == pytest.approx(expect, rel=2e-2)
    assert pv["export"]["per_module"]["big"] == pytest.approx(got[-1], rel=1e-9)
    # a merge already re-factored at rank 10 plus its spectra: the same export numbers
    res = merge_adapters(ads, "ties", rank=10)
    again = preview_merge(ads, res.modules, rank=10, p=0.05, spectra=res.spectra)
    assert again["export"]["relative_error"] == pytest.approx(pv["export"]["relative_error"], rel=1e-6)


def test_preview_rows_are_keyed_by_input_index_when_names_repeat():
    a, b = (random_adapter("adapter", seed=s, shapes=SHAPES) for s in (1, 2))
    pv = preview_merge([a, b], merge_adapters([a, b], "linear").modules, p=0.1)
    assert [r["index"] for r in pv["per_input"]] == [0, 1]
    assert pv["per_input"][0]["cosine"] != pv["per_input"][1]["cosine"]


def test_bounded_threads_caps_nests_and_restores():
    before = torch.get_num_threads()
    with bounded_threads(1) as cap:
        assert cap == 1 and torch.get_num_threads() == 1
        with bounded_threads(4):
            assert torch.get_num_threads() == 1  # an inner block never raises the cap
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_batched_svds_equal_one_at_a_time():
    from analysis.merge.ops import svd_of, svds_of

    ads = trio()
    deltas = [a.modules["m0"] for a in ads]
    for (U, S, V), d in zip(svds_of(deltas), deltas):
        U1, S1, V1 = svd_of(d)
        assert torch.allclose(S, S1) and torch.allclose((U * S) @ V.T, (U1 * S1) @ V1.T, atol=1e-10)


def test_claims_union_and_pair_counts_match_the_masks():
    from analysis.isolation import pair_counts
    from analysis.merge.claims import gather_claims

    ads = trio()
    cores = task_cores(ads, granularity="entries", p=0.2)
    at = [cores["m0"][i] for i in range(3)]
    claims = gather_claims(at)
    masks = torch.stack([c.mask().reshape(-1) for c in at])  # (3, numel)
    assert torch.equal(claims.positions, masks.any(0).nonzero().squeeze(1))
    assert torch.equal(claims.member, masks[:, claims.positions])
    m = masks.to(torch.float64)
    assert torch.equal(torch.from_numpy(pair_counts(at)), m @ m.T)
