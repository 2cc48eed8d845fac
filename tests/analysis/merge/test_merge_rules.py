"""Per-method rules: weight 0 is no contribution, TIES' one weighting rule, wide KnOTS/TSV, shape checks."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from merge_factories import random_adapter

from analysis.adapters.model import Adapter, LowRankDelta
from analysis.errors import RecipeError
from analysis.merge import METHODS, get_method, merge_adapters
from analysis.merge.sparsify import drop_generator, random_drop

SHAPES = {"layers.0.q": (12, 10), "layers.0.v": (8, 10)}


def dense(result, module):  # noqa: ANN001, ANN201
    return result.modules[module].dense(torch.float64)


def adapter_of(name: str, modules: dict[str, LowRankDelta]) -> Adapter:
    return Adapter(name=name, path=Path(f"/tmp/{name}"), format="peft", base_model="base", config={},
                   modules=modules, _sha256=name.ljust(64, "0"))


# --- LowRankDelta and weights --------------------------------------------------------------------------

@pytest.mark.parametrize(("A", "B", "scale", "message"), [
    (torch.zeros(4, 10), torch.zeros(12, 3), 1.0, "rank 4 but B"),
    (torch.zeros(10), torch.zeros(12, 3), 1.0, "must be 2-D"),
    (torch.zeros(3, 10), torch.zeros(12, 3, 1), 1.0, "must be 2-D"),
    (torch.zeros(3, 10), torch.zeros(12, 3), float("nan"), "finite"),
    (torch.zeros(3, 10), torch.zeros(12, 3), float("inf"), "finite"),
])
def test_lowrank_delta_refuses_malformed_factors(A, B, scale, message):  # noqa: ANN001
    with pytest.raises(ValueError, match=f"LowRankDelta: .*{message}"):
        LowRankDelta(A=A, B=B, scale=scale)


def test_lowrank_delta_accepts_a_rank_wider_than_the_module():
    d = LowRankDelta(A=torch.randn(20, 6), B=torch.randn(5, 20), scale=0.5)
    assert d.shape == (5, 6) and d.rank == 20


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x"])
def test_non_finite_weights_are_refused(bad):  # noqa: ANN001
    with pytest.raises(RecipeError, match="weight 2"):
        get_method("linear").resolve_weights(2, [1.0, bad])


def test_all_zero_weights_are_refused():
    with pytest.raises(RecipeError, match="every weight is 0"):
        get_method("ties").resolve_weights(2, [0.0, 0.0])


# --- weight 0 means no contribution, in every method ----------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_weight_zero_input_contributes_nothing(method: str):
    """The result cannot depend on a weight-0 input's content, and equals the merge without it."""
    a, b = (random_adapter(n, seed=s, shapes=SHAPES) for n, s in (("a", 1), ("b", 2)))
    c1, c2 = (random_adapter("c", seed=s, shapes=SHAPES, scale=3.0) for s in (7, 8))
    spec = get_method(method)
    params = {"p": 0.2} if method == "isolation" else None
    if spec.max_inputs == 2:
        with_c1 = merge_adapters([a, c1], method, weights=[1.0, 0.0], params=params)
        with_c2 = merge_adapters([a, c2], method, weights=[1.0, 0.0], params=params)
        without = None
    else:
        with_c1 = merge_adapters([a, b, c1], method, weights=[0.7, 0.4, 0.0], params=params)
        with_c2 = merge_adapters([a, b, c2], method, weights=[0.7, 0.4, 0.0], params=params)
        without = merge_adapters([a, b], method, weights=[0.7, 0.4], params=params)
    for m in SHAPES:
        assert torch.allclose(dense(with_c1, m), dense(with_c2, m), atol=1e-9), method
        if without is not None:
            assert torch.allclose(dense(with_c1, m), dense(without, m), atol=1e-9), method


def test_isolation_does_not_transplant_a_weight_zero_core():
    a = random_adapter("a", seed=1, shapes=SHAPES)
    loud = random_adapter("loud", seed=2, shapes=SHAPES, scale=100.0)  # its cores would win every conflict
    res = merge_adapters([a, loud], "isolation", weights=[1.0, 0.0], params={"p": 0.3})
    for m in SHAPES:  # a alone at weight 1 (mean blend: coefficient 1): exactly a
        assert torch.allclose(dense(res, m), a.modules[m].dense(torch.float64), atol=1e-6)
    assert res.info["groups"][1] == -1


# --- TIES / DARE-TIES: mergekit's weighting rule --------------------------------------------------------

def mergekit_ties(tasks: list[torch.Tensor], weights: list[float], density: float, consensus: str) -> torch.Tensor:
    """Independent dense re-implementation of mergekit's generalized_task_arithmetic (TIES branch)."""
    trimmed = []
    for t in tasks:  # sparsify(..., method=magnitude): k = int(density * numel), torch.topk on |t|
        if density >= 1:
            trimmed.append(t)
            continue
        k = int(density * t.numel())
        mask = torch.zeros(t.numel())
        mask[torch.topk(t.abs().reshape(-1), k=k).indices] = 1
        trimmed.append(t * mask.reshape(t.shape))
    deltas = torch.stack(trimmed)  # (N, ...)
    w = torch.tensor(weights, dtype=deltas.dtype).reshape(-1, 1, 1)
    weighted = deltas * w
    sign = weighted.sign()
    votes = weighted.sum(dim=0) if consensus == "sum" else sign.sum(dim=0)
    mask = sign == ((votes >= 0).to(deltas.dtype) * 2 - 1)
    mixed = (weighted * mask).sum(dim=0)
    divisor = (w * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return mixed / divisor


@pytest.mark.parametrize(("majority", "consensus"), [("total", "sum"), ("frequency", "count")])
def test_ties_with_unequal_weights_follows_mergekit(majority: str, consensus: str):
    ads = [random_adapter(n, seed=s, shapes=SHAPES) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    weights = [0.2, 1.5, 0.7]
    got = merge_adapters(ads, "ties", weights=weights, params={"density": 0.4, "majority_sign": majority})
    for m in SHAPES:
        expect = mergekit_ties([a.modules[m].dense(torch.float32) for a in ads], weights, 0.4, consensus)
        assert torch.allclose(got.modules[m].dense(torch.float32), expect, atol=1e-5)
    # and it is not PEFT's rule (unweighted election, divide by count), which unequal weights tell apart
    from peft.utils.merge_utils import ties as peft_ties

    m = "layers.0.q"
    peft = peft_ties([a.modules[m].dense(torch.float32) for a in ads], torch.tensor(weights), 0.4, majority)
    assert not torch.allclose(got.modules[m].dense(torch.float32), peft, atol=1e-3)


def test_dare_ties_with_unequal_weights_follows_mergekit():
    ads = [random_adapter(n, seed=s, shapes=SHAPES) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    weights = [2.0, 0.5, 1.0]
    got = merge_adapters(ads, "dare_ties", weights=weights, params={"drop_rate": 0.3, "seed": 4})
    for m in SHAPES:
        dropped = [random_drop(a.modules[m].dense(torch.float32), 0.3, drop_generator(4, m, i), rescale=True)
                   for i, a in enumerate(ads)]
        expect = mergekit_ties(dropped, weights, 1.0, "sum")
        assert torch.allclose(got.modules[m].dense(torch.float32), expect, atol=1e-5)


# --- KnOTS and TSV when the summed rank exceeds the module width -----------------------------------------

def wide_set(overlap: bool) -> list[Adapter]:
    """Ten rank-32 adapters on a 192 x 96 module (summed rank 320 > both widths); with `overlap`, all share
    16 columns of B (a common output subspace) and the first two share their A outright."""
    g = torch.Generator().manual_seed(0)
    shared_B = torch.randn(192, 16, generator=g, dtype=torch.float64)
    shared_A = torch.randn(32, 96, generator=g, dtype=torch.float64)
    out = []
    for i in range(10):
        B = torch.randn(192, 32, generator=g, dtype=torch.float64) / 4
        A = torch.randn(32, 96, generator=g, dtype=torch.float64) / 4
        if overlap:
            B[:, :16] = shared_B
            if i < 2:
                A = shared_A.clone()
        out.append(adapter_of(f"w{i}", {"k_proj": LowRankDelta(A=A, B=B, scale=0.5)}))
    return out


def knots_dense(Ws: list[torch.Tensor], weights: list[float], inner: str, density: float) -> torch.Tensor:
    """KnOTS by one dense SVD of [dW_1 .. dW_N], null directions dropped, then the inner merge."""
    U, S, Vh = torch.linalg.svd(torch.cat(Ws, dim=1), full_matrices=False)  # (n_out, m), (m,), (m, N n_in)
    k = int((S > 1e-10 * S[0]).sum())
    n_in = Ws[0].shape[1]
    Vs = [Vh[:k, i * n_in:(i + 1) * n_in].T for i in range(len(Ws))]  # (n_in, k) each
    if inner == "linear":
        V = sum(w * v for w, v in zip(weights, Vs))
    else:
        V = mergekit_ties(Vs, weights, density, "sum")
    return (U[:, :k] * S[:k]) @ V.T


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("inner", ["linear", "ties"])
def test_knots_beyond_the_width_matches_a_dense_joint_svd(overlap: bool, inner: str):
    ads = wide_set(overlap)
    weights = [1.0 + 0.1 * i for i in range(10)]
    got = merge_adapters(ads, "knots", weights=weights, params={"inner": inner, "density": 0.3})
    d = got.modules["k_proj"]
    assert isinstance(d, LowRankDelta) and d.rank <= 96
    expect = knots_dense([a.modules["k_proj"].dense(torch.float64) for a in ads], weights, inner, 0.3)
    assert float((d.dense(torch.float64) - expect).norm() / expect.norm()) < 1e-6


def tsv_dense(Ws: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """TSV-Merge as in the paper's code, on dense updates: per-task SVD, concatenate, polar factors
    (null directions dropped), U_perp diag(S) V_perp^T."""
    Us, Ss, Vs = [], [], []
    for W, w in zip(Ws, weights):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        k = int((S > 1e-10 * S[0]).sum())
        Us.append(U[:, :k])
        Ss.append(S[:k] * w)
        Vs.append(Vh[:k].T)

    def polar(X: torch.Tensor) -> torch.Tensor:
        P, sig, Qh = torch.linalg.svd(X, full_matrices=False)
        k = int((sig > 1e-10 * sig[0]).sum())
        return P[:, :k] @ Qh[:k]

    return polar(torch.cat(Us, dim=1)) @ torch.diag(torch.cat(Ss)) @ polar(torch.cat(Vs, dim=1)).T


@pytest.mark.parametrize("overlap", [False, True])
def test_tsv_beyond_the_width_matches_the_dense_route(overlap: bool):
    ads = wide_set(overlap)
    weights = [1.0 - 0.05 * i for i in range(10)]
    got = merge_adapters(ads, "tsv", weights=weights)
    d = got.modules["k_proj"]
    assert isinstance(d, LowRankDelta) and d.rank <= 96  # compacted to the module width, exactly
    expect = tsv_dense([a.modules["k_proj"].dense(torch.float64) for a in ads], weights)
    assert float((d.dense(torch.float64) - expect).norm() / expect.norm()) < 1e-6


def test_wide_knots_and_tsv_export_at_a_rank():
    ads = wide_set(True)
    for method in ("knots", "tsv"):
        res = merge_adapters(ads, method, rank=8)
        d = res.modules["k_proj"]
        assert d.rank == 8 and math.isfinite(d.frobenius_norm())
        assert res.spectra["k_proj"].complete
