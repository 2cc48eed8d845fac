"""Merge methods against their formulas, computed a second way (dense, by hand, or by PEFT's merge_utils)."""
from __future__ import annotations

import math

import pytest
import torch
from merge_factories import random_adapter

from analysis.adapters.model import DenseDelta, LowRankDelta
from analysis.errors import IncompatibleAdaptersError, RecipeError
from analysis.merge import METHODS, get_method, merge_adapters
from analysis.merge.registry import parse_param_strings
from analysis.merge.slerp import multislerp_coefficients, slerp_coefficients

IDENTITY_PARAMS = {
    "ties": {"density": 1.0}, "magnitude_prune": {"density": 1.0}, "dare_linear": {"drop_rate": 0.0},
    "dare_ties": {"drop_rate": 0.0}, "knots": {"inner": "linear"},
}


# The TIES steps one at a time, as the paper states them (a second route to the library's one fused kernel,
# `analysis.merge.sparsify.trim_rows` + `ties_merge`): trim one task by top-k, elect a sign per entry, weighted
# mean of the agreeing entries (mergekit's divisor: the agreeing tasks' summed weight, 0 -> 1).
def trim(task: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1.0:
        return task
    k = int(density * task.numel())
    out = torch.zeros_like(task).reshape(-1)
    if k > 0:
        idx = torch.topk(task.abs().reshape(-1), k).indices
        out[idx] = task.reshape(-1)[idx]
    return out.reshape(task.shape)


def elect_sign(stacked: torch.Tensor, method: str) -> torch.Tensor:
    votes = stacked.sum(dim=0) if method == "total" else stacked.sign().sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    return stacked * elected > 0


def disjoint_mean(stacked: torch.Tensor, agree: torch.Tensor, weights: list[float] | None = None) -> torch.Tensor:
    mask = agree.to(stacked.dtype)
    total = (stacked * mask).sum(dim=0)
    w = torch.ones(stacked.shape[0], dtype=stacked.dtype) if weights is None else \
        torch.tensor([float(x) for x in weights], dtype=stacked.dtype)
    divisor = torch.tensordot(w, mask, dims=1)
    return total / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def dense(result, module):  # noqa: ANN001, ANN201
    return result.modules[module].dense(torch.float64)


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def test_unknown_method_lists_valid_names():
    with pytest.raises(RecipeError, match="valid: .*isolation.*ties"):
        get_method("nope")


def test_params_are_coerced_and_range_checked():
    spec = get_method("ties")
    assert spec.resolve_params(parse_param_strings(["density=0.5"]))["density"] == 0.5
    with pytest.raises(RecipeError, match="above the maximum"):
        spec.resolve_params({"density": "1.5"})
    with pytest.raises(RecipeError, match="majority_sign.*not one of"):
        spec.resolve_params({"majority_sign": "loud"})
    with pytest.raises(RecipeError, match="no parameter 'p'"):
        spec.resolve_params({"p": 1})
    with pytest.raises(RecipeError, match="expected key=value"):
        parse_param_strings(["density"])


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"slerp"}))
def test_one_adapter_at_weight_one_is_returned(method: str):
    a = random_adapter("a", seed=1)
    out = merge_adapters([a], method, weights=[1.0], params=IDENTITY_PARAMS.get(method))
    for m in a.modules:
        assert rel(dense(out, m), a.modules[m].dense(torch.float64)) < 1e-6, method


def test_slerp_endpoints_and_formula():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2)
    m = "layers.0.q"
    x, y = a.modules[m].dense(torch.float64), b.modules[m].dense(torch.float64)
    assert rel(dense(merge_adapters([a, b], "slerp", params={"t": 0.0}), m), x) < 1e-9
    assert rel(dense(merge_adapters([a, b], "slerp", params={"t": 1.0}), m), y) < 1e-9
    # dense route: angle between the flattened, normalised updates
    omega = math.acos(float((x / x.norm() * (y / y.norm())).sum()))
    t = 0.3
    expect = math.sin((1 - t) * omega) / math.sin(omega) * x + math.sin(t * omega) / math.sin(omega) * y
    got = merge_adapters([a, b], "slerp", params={"t": t})
    assert rel(dense(got, m), expect) < 1e-9
    assert isinstance(got.modules[m], LowRankDelta)


def test_multislerp_of_two_equal_norm_directions_is_slerp():
    G = torch.tensor([[4.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    c = multislerp_coefficients(G, [0.7, 0.3])
    c0, c1 = slerp_coefficients(G, 0.3)
    assert torch.allclose(c, torch.tensor([c0, c1], dtype=torch.float64), atol=1e-9)


def test_linear_family_equals_dense_weighted_sums():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2, rank=2)
    m = "layers.0.v"
    x, y = a.modules[m].dense(torch.float64), b.modules[m].dense(torch.float64)
    assert rel(dense(merge_adapters([a, b], "linear"), m), (x + y) / 2) < 1e-12
    assert rel(dense(merge_adapters([a, b], "task_arithmetic", weights=[1, -2], params={"lambda": 0.5}), m),
               0.5 * (x - 2 * y)) < 1e-12
    out = merge_adapters([a, b], "cat", weights=[2, 3])
    assert out.modules[m].rank == 6 and rel(dense(out, m), 2 * x + 3 * y) < 1e-12


def test_svd_equals_dense_truncated_svd():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2)
    m = "layers.0.q"
    total = a.modules[m].dense(torch.float64) + b.modules[m].dense(torch.float64)
    U, S, Vh = torch.linalg.svd(total)
    expect = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    out = merge_adapters([a, b], "svd", params={"rank": 3})
    assert out.modules[m].rank == 3 and rel(dense(out, m), expect) < 1e-9


def test_ties_on_a_hand_computed_example():
    t1 = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    t2 = torch.tensor([[-2.0, -4.0], [1.0, -0.1]])
    # trim to 50%: t1 keeps 3, 2; t2 keeps -2, -4
    assert torch.equal(trim(t1, 0.5), torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
    stacked = torch.stack([trim(t1, 0.5), trim(t2, 0.5)])
    agree = elect_sign(stacked, "total")  # sums: [1, -4], [0, 2] -> signs +, -, +, +
    merged = disjoint_mean(stacked, agree)
    assert torch.equal(merged, torch.tensor([[3.0, -4.0], [0.0, 2.0]]))


def test_ties_matches_peft_merge_utils():
    from peft.utils.merge_utils import ties as peft_ties

    a, b, c = (random_adapter(n, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    m = "layers.0.q"
    tasks = [x.modules[m].dense(torch.float32) for x in (a, b, c)]
    for method in ("total", "frequency"):
        expect = peft_ties(tasks, torch.ones(3), 0.3, method)
        got = merge_adapters([a, b, c], "ties", params={"density": 0.3, "majority_sign": method})
        assert torch.allclose(got.modules[m].dense(torch.float32), expect, atol=1e-5)
        assert isinstance(got.modules[m], DenseDelta)


def test_dare_drops_at_the_rate_and_rescales_survivors():
    a = random_adapter("a", seed=1, shapes={"w": (200, 100)})
    x = a.modules["w"].dense(torch.float32)
    out = merge_adapters([a], "dare_linear", weights=[1.0], params={"drop_rate": 0.7, "seed": 5})
    W = out.modules["w"].dense(torch.float32)
    kept = W != 0
    assert abs(float(kept.float().mean()) - 0.3) < 0.02
    assert torch.allclose(W[kept], x[kept] / 0.3, rtol=1e-5)
    again = merge_adapters([a], "dare_linear", weights=[1.0], params={"drop_rate": 0.7, "seed": 5})
    other = merge_adapters([a], "dare_linear", weights=[1.0], params={"drop_rate": 0.7, "seed": 6})
    assert torch.equal(again.modules["w"].W, W) and not torch.equal(other.modules["w"].W, W)


def test_dare_ties_without_drop_is_ties_without_trim():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2)
    x = merge_adapters([a, b], "dare_ties", params={"drop_rate": 0.0})
    y = merge_adapters([a, b], "ties", params={"density": 1.0})
    assert torch.equal(x.modules["layers.0.q"].W, y.modules["layers.0.q"].W)


def test_knots_linear_inner_is_task_arithmetic_and_ties_stays_low_rank():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2, rank=3)
    m = "layers.0.q"
    expect = a.modules[m].dense(torch.float64) + 2 * b.modules[m].dense(torch.float64)
    got = merge_adapters([a, b], "knots", weights=[1, 2], params={"inner": "linear"})
    assert rel(dense(got, m), expect) < 1e-9
    tied = merge_adapters([a, b], "knots")
    assert isinstance(tied.modules[m], LowRankDelta) and tied.modules[m].rank <= 7


def test_tsv_of_updates_in_orthogonal_subspaces_is_their_sum():
    e = torch.eye(8, dtype=torch.float64)
    d1 = LowRankDelta(A=e[:2] * 3, B=e[:, :2] * 2, scale=1.0)  # rows/cols 0-1
    d2 = LowRankDelta(A=e[2:4], B=e[:, 2:4] * 5, scale=1.0)  # rows/cols 2-3
    a, b = random_adapter("a"), random_adapter("b")
    a.modules, b.modules = {"m": d1}, {"m": d2}
    got = merge_adapters([a, b], "tsv")
    assert rel(dense(got, "m"), d1.dense(torch.float64) + d2.dense(torch.float64)) < 1e-12


def test_orthogonal_removes_what_tasks_share():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2)
    m = "layers.0.q"
    twin = random_adapter("twin", seed=1)
    assert dense(merge_adapters([a, twin], "orthogonal"), m).norm() < 1e-9  # identical subspaces cancel
    out = merge_adapters([a, b], "orthogonal")
    # dense route: each update minus its projection on the other's column space (rank 4 each)
    Ub = torch.linalg.svd(b.modules[m].dense(torch.float64))[0][:, :4]  # (12, 4)
    merged = dense(out, m)
    Ua = torch.linalg.svd(a.modules[m].dense(torch.float64))[0][:, :4]
    pa = (torch.eye(12, dtype=torch.float64) - Ub @ Ub.T) @ a.modules[m].dense(torch.float64)
    pb = (torch.eye(12, dtype=torch.float64) - Ua @ Ua.T) @ b.modules[m].dense(torch.float64)
    assert rel(merged, pa + pb) < 1e-9


def test_mismatched_shapes_and_bases_are_refused():
    a = random_adapter("a")
    b = random_adapter("b", shapes={"layers.0.q": (12, 11)})
    with pytest.raises(IncompatibleAdaptersError, match="layers.0.q"):
        merge_adapters([a, b], "linear")
    c = random_adapter("c", base="other")
    with pytest.raises(IncompatibleAdaptersError, match="different base models"):
        merge_adapters([a, c], "linear")
    assert merge_adapters([a, c], "linear", force=True).modules


def test_modules_present_in_one_input_only():
    a = random_adapter("a", seed=1)
    b = random_adapter("b", seed=2, shapes={"layers.0.q": (12, 10)})
    out = merge_adapters([a, b], "task_arithmetic")
    assert rel(dense(out, "layers.0.v"), a.modules["layers.0.v"].dense(torch.float64)) < 1e-12


def test_rank_refactors_each_module():
    a, b = random_adapter("a", seed=1), random_adapter("b", seed=2)
    out = merge_adapters([a, b], "ties", rank=2)
    assert all(isinstance(d, LowRankDelta) and d.rank == 2 for d in out.modules.values())


def test_pydantic_parameter_models_come_from_the_declarations():
    from pydantic import ValidationError

    from analysis.export.recipe import recipe_json_schema
    from analysis.merge.registry import params_model

    ties_params = params_model("ties")
    assert ties_params().density == 0.2
    with pytest.raises(ValidationError):
        ties_params(density=1.5)
    with pytest.raises(ValidationError):
        params_model("isolation")(granularity="cells")
    schema = recipe_json_schema()["x-method-parameters"]
    assert set(schema) == set(METHODS)
    assert schema["ties"]["properties"]["density"]["maximum"] == 1.0


def test_trim_rows_keeps_each_tasks_top_k_like_trim_and_exactly_k_under_ties():
    from analysis.merge.sparsify import trim_rows

    g = torch.Generator().manual_seed(11)
    X = torch.randn(5, 30, 20, generator=g)  # (N, n_out, n_in), no ties
    got = trim_rows(X.clone(), 0.3)
    want = torch.stack([trim(x, 0.3) for x in X])  # one task at a time, by top-k
    assert torch.equal(got, want)
    # ties at the threshold: exactly k kept per task, the first ones in position order
    T = torch.tensor([[[3.0, 1.0, 1.0, 1.0, 1.0, -2.0]], [[0.0, 0.0, 5.0, 0.0, 0.0, 0.0]]])  # (2, 1, 6)
    kept = trim_rows(T.clone(), 0.5)  # k = 3
    assert torch.equal(kept[0], torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0, -2.0]]))
    assert torch.count_nonzero(kept[0]) == 3 and torch.equal(kept[1], T[1])  # zeros tie at 0: nothing changes
    # a non-contiguous input is trimmed too (the result is returned, not lost in a copy)
    Y = torch.randn(6, 5, 4, generator=g).transpose(1, 2)  # (6, 4, 5) non-contiguous
    out = trim_rows(Y.clone(), 0.25)
    assert torch.equal(out, torch.stack([trim(y, 0.25) for y in Y])) and int(torch.count_nonzero(out[0])) == 5


def test_isolation_reuses_cores_given_with_its_own_settings_and_ignores_others(monkeypatch):  # noqa: ANN001
    import analysis.merge.isolation as iso_merge
    from analysis.isolation import CoreChoice, CoreSettings, task_cores

    ads = [random_adapter(f"t{i}", rank=3, shapes={"m0": (24, 20), "m1": (24, 20)}, seed=i) for i in range(3)]
    own = merge_adapters(ads, "isolation", params={"p": 0.05})
    cores = task_cores(ads, granularity="entries", p=0.05)
    calls = []
    real = iso_merge.task_cores
    monkeypatch.setattr(iso_merge, "task_cores", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = merge_adapters(ads, "isolation", params={"p": 0.05}, cores=CoreChoice(CoreSettings("entries", 0.05), cores))
    assert calls == [] and reused.cores is cores
    for m in own.modules:
        assert torch.equal(reused.modules[m].dense(torch.float64), own.modules[m].dense(torch.float64))
    merge_adapters(ads, "isolation", params={"p": 0.05}, cores=CoreChoice(CoreSettings("entries", 0.01), cores))  # other settings
    merge_adapters(ads[:2], "isolation", params={"p": 0.05}, cores=CoreChoice(CoreSettings("entries", 0.05), {}))  # not covering
    masks = {m: {i: c.mask() for i, c in at.items()} for m, at in cores.items()}  # bare masks carry no values
    merge_adapters(ads, "isolation", params={"p": 0.05}, cores=CoreChoice(CoreSettings("entries", 0.05), masks))
    assert calls == [1, 1, 1]


def test_a_method_without_core_settings_never_receives_the_callers_cores(monkeypatch):  # noqa: ANN001
    """merge_adapters(cores=...) is passed by the Merge page for every method: a `prepare` of a method that
    declares no cores (`MergeMethod.cores` False) must still work."""
    import dataclasses

    from analysis.isolation import CoreChoice, CoreSettings, task_cores
    from analysis.merge.registry import METHODS

    seen = []
    linear = METHODS["linear"]
    probe = dataclasses.replace(linear, name="probe", prepare=lambda ads, w, p: seen.append(len(ads)) or None)
    monkeypatch.setitem(METHODS, "probe", probe)
    ads = [random_adapter(f"t{i}", rank=2, seed=i) for i in range(2)]
    res = merge_adapters(ads, "probe", cores=CoreChoice(CoreSettings("entries", 0.05), task_cores(ads, p=0.05)))
    assert seen == [2] and set(res.modules) == set(ads[0].modules)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.3, 1.2, 0.7], [-0.5, -0.5, -0.5],
                                     [1.0, -2.0, 0.5]])
@pytest.mark.parametrize("majority", ["total", "frequency"])
def test_fused_ties_merge_equals_the_step_by_step_rule(weights: list[float], majority: str):
    """`ties_merge` (float passes, equal-weight shortcut) against elect_sign + disjoint_mean on w * x."""
    from analysis.merge.sparsify import ties_merge

    g = torch.Generator().manual_seed(5)
    tasks = torch.stack([trim(torch.randn(9, 7, generator=g, dtype=torch.float64), 0.4) for _ in weights])
    weighted = tasks * torch.tensor(weights, dtype=torch.float64)[:, None, None]
    want = disjoint_mean(weighted, elect_sign(weighted, majority), weights) * 0.8
    got = ties_merge(tasks.clone(), weights, majority, 0.8)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)


def test_core_support_is_declared_by_the_method_not_guessed_from_parameter_names():
    from analysis.merge.registry import register

    assert get_method("isolation").cores and not get_method("ties").cores
    assert get_method("isolation").core_settings({"granularity": "rows", "p": 0.1}) == ("rows", 0.1)
    assert get_method("ties").core_settings({"granularity": "rows", "p": 0.1}) is None  # names alone mean nothing
    with pytest.raises(ValueError, match="granularity and p"):
        register("bad_cores", help="declares cores without their parameters", cores=True)(lambda *a: None)
    assert "bad_cores" not in METHODS
