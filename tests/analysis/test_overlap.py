"""Overlap tables against dense routes (flattened dW, dense SVD, scipy.linalg.subspace_angles)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.adapters.model import Adapter, DenseDelta, LowRankDelta
from analysis.errors import IncompatibleAdaptersError
from analysis.overlap import (
    aggregate,
    module_overlap,
    modules_by_layer,
    overlap_table,
    pair_layer_module_matrix,
    parse_module_name,
    shared_modules,
)


def _lowrank(rng: np.random.Generator, n_out: int, n_in: int, r: int) -> LowRankDelta:
    return LowRankDelta(A=torch.from_numpy(rng.standard_normal((r, n_in))),
                        B=torch.from_numpy(rng.standard_normal((n_out, r))), scale=float(rng.uniform(0.1, 2)))


def _adapter(name: str, modules: dict) -> Adapter:
    return Adapter(name=name, path=Path(name), format="peft", base_model=None, config={}, modules=modules)


def _dense_colspace(W: np.ndarray) -> np.ndarray:
    u, s, _ = np.linalg.svd(W, full_matrices=False)
    return u[:, : int((s > s[0] * 1e-10).sum())]


@given(seed=st.integers(0, 2**31), n_dense=st.integers(0, 2))
@settings(max_examples=15, deadline=None)
def test_module_overlap_matches_dense_routes(seed: int, n_dense: int) -> None:
    rng = np.random.default_rng(seed)
    n_out, n_in = 24, 18
    deltas = [_lowrank(rng, n_out, n_in, int(rng.integers(1, 5))) for _ in range(3)]
    # a dense delta of known rank 3, and one low-rank delta sharing a direction with the first
    deltas += [DenseDelta(W=torch.from_numpy(rng.standard_normal((n_out, 3)) @ rng.standard_normal((3, n_in))))
               for _ in range(n_dense)]
    deltas.append(LowRankDelta(A=deltas[0].A[:1].clone(), B=deltas[0].B[:, :1] + 0.01, scale=1.0))
    names = [f"a{i}" for i in range(len(deltas))]
    mo = module_overlap(deltas, names, "m")
    W = [d.dense(torch.float64).numpy() for d in deltas]
    flat = np.stack([w.ravel() for w in W])
    norms = np.linalg.norm(flat, axis=1)
    np.testing.assert_allclose(mo.norm, norms, rtol=1e-10)
    np.testing.assert_allclose(mo.cosine, flat @ flat.T / np.outer(norms, norms), atol=1e-10)
    for i, wi in enumerate(W):
        ui, vi = _dense_colspace(wi), _dense_colspace(wi.T)
        assert mo.ranks[i] == ui.shape[1]
        for j, wj in enumerate(W):
            uj, vj = _dense_colspace(wj), _dense_colspace(wj.T)
            phi = np.linalg.norm(ui.T @ uj) ** 2 / min(ui.shape[1], uj.shape[1])
            assert mo.subspace_similarity[i, j] == pytest.approx(phi, abs=1e-9)
            phi_in = np.linalg.norm(vi.T @ vj) ** 2 / min(vi.shape[1], vj.shape[1])
            assert mo.input_subspace_similarity[i, j] == pytest.approx(phi_in, abs=1e-9)
            share = np.linalg.norm(uj @ uj.T @ wi) ** 2 / np.linalg.norm(wi) ** 2
            assert mo.energy_overlap[i, j] == pytest.approx(share, abs=1e-9)
            if i != j:
                ref = np.sort(np.degrees(scipy.linalg.subspace_angles(wi, wj)))
                np.testing.assert_allclose(mo.principal_angles_deg[i][j], ref, atol=1e-6)
                assert mo.mean_angle_deg[i, j] == pytest.approx(ref.mean(), abs=1e-6)
    assert np.allclose(np.diag(mo.cosine), 1.0) and np.allclose(mo.cosine, mo.cosine.T)
    np.testing.assert_allclose(np.diag(mo.subspace_similarity), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(mo.mean_angle_deg), 0.0)
    # the near-copy of adapter 0's first direction lies almost inside adapter 0's column space
    assert mo.energy_overlap[-1, 0] > 0.99
    js = mo.to_json()
    assert len(js["cosine"]) == len(deltas) and len(js["principal_angles_deg"][0][1]) == min(mo.ranks[:2])


def test_zero_update_is_reported_not_nan() -> None:
    rng = np.random.default_rng(0)
    live = _lowrank(rng, 10, 8, 2)
    dead = LowRankDelta(A=live.A.clone(), B=torch.zeros(10, 2), scale=1.0)
    mo = module_overlap([live, dead], ["live", "dead"], "m")
    for mat in (mo.cosine, mo.subspace_similarity, mo.energy_overlap, mo.mean_angle_deg):
        assert np.isfinite(mat).all()
    assert mo.ranks == [2, 0] and mo.cosine[0, 1] == 0.0 and mo.mean_angle_deg[0, 1] == 90.0


def test_shared_modules_intersects_checks_shapes_and_names_adapters() -> None:
    rng = np.random.default_rng(1)
    a = _adapter("alpha", {"x.q": _lowrank(rng, 6, 6, 2), "x.k": _lowrank(rng, 6, 6, 2), "x.v": _lowrank(rng, 6, 6, 2)})
    b = _adapter("beta", {"x.q": _lowrank(rng, 6, 6, 2), "x.k": _lowrank(rng, 8, 6, 2)})
    assert shared_modules([a, b]) == ["x.q"]
    assert shared_modules([a, a], r"\.(k|v)$") == ["x.k", "x.v"]
    c = _adapter("gamma", {"y.q": _lowrank(rng, 6, 6, 2)})
    with pytest.raises(IncompatibleAdaptersError, match="alpha, beta, gamma"):
        shared_modules([a, b, c])


def test_overlap_table_progress_and_aggregates_match_whole_adapter_routes() -> None:
    rng = np.random.default_rng(2)
    mods = [f"model.layers.{l}.self_attn.{p}" for l in range(3) for p in ("q_proj", "v_proj")]
    adapters = [_adapter(f"ad{i}", {m: _lowrank(rng, 12, 10, 2) for m in mods}) for i in range(4)]
    # make ad3 share layer 0 with ad0 exactly: a strong, localised collision
    for m in mods[:2]:
        adapters[3].modules[m] = adapters[0].modules[m]
    calls: list[tuple[int, int, str]] = []
    table = overlap_table(adapters, progress=lambda d, t, m: calls.append((d, t, m)))
    assert [c[0] for c in calls] == list(range(1, 7)) and calls[-1][1] == 6
    flat = np.stack([np.concatenate([a.modules[m].dense(torch.float64).numpy().ravel() for m in mods])
                     for a in adapters])
    norms = np.linalg.norm(flat, axis=1)
    np.testing.assert_allclose(aggregate(table, "cosine"), flat @ flat.T / np.outer(norms, norms), atol=1e-10)
    # energy aggregate = share of i's total energy inside j's per-module column spaces
    for i in range(4):
        for j in range(4):
            inside = sum(np.linalg.norm(_proj(adapters[j].modules[m]) @ adapters[i].modules[m].dense(torch.float64).numpy()) ** 2
                         for m in mods)
            assert aggregate(table, "energy_overlap")[i, j] == pytest.approx(inside / norms[i] ** 2, rel=1e-8)
    by_layer = aggregate(table, "subspace_similarity", group_by="layer")
    assert list(by_layer) == [0, 1, 2]
    assert by_layer[0][0, 3] == pytest.approx(1.0) and by_layer[1][0, 3] < 0.9
    layers, types, mat = pair_layer_module_matrix(table, "ad0", 3, "mean_angle_deg")
    assert layers == [0, 1, 2] and types == ["self_attn.q_proj", "self_attn.v_proj"] and mat.shape == (3, 2)
    assert mat[0, 0] == pytest.approx(0.0, abs=1e-6) and mat[2, 1] > 1.0
    assert list(modules_by_layer(table)) == [0, 1, 2]


def _proj(d: LowRankDelta) -> np.ndarray:
    u = _dense_colspace(d.dense(torch.float64).numpy())
    return u @ u.T


@pytest.mark.parametrize("name, expected", [
    ("model.layers.3.self_attn.q_proj", (3, "self_attn.q_proj")),
    ("base_model.model.model.layers.12.mlp.down_proj", (12, "mlp.down_proj")),
    ("transformer.h.0.attn.c_attn", (0, "attn.c_attn")),
    ("distilbert.transformer.layer.5.attention.q_lin", (5, "attention.q_lin")),
    ("down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q",
     ("down_blocks.0.attentions.1.transformer_blocks.0", "attn1.to_q")),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
     ("mid_block.attentions.0.transformer_blocks.0", "attn2.to_out.0")),
    ("up_blocks.1.resnets.2.conv1", ("up_blocks.1.resnets.2", "conv1")),
    ("text_encoder.text_model.encoder.layers.4.self_attn.k_proj", ("text_encoder.layers.4", "self_attn.k_proj")),
    ("classifier", ("", "classifier")),
])
def test_parse_module_name(name: str, expected: tuple) -> None:
    assert parse_module_name(name) == expected
