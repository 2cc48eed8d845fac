"""Exports read back by real PEFT: `PeftModel.from_pretrained` + `get_delta_weight` reproduce the merge."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "merge"))
from merge_factories import peft_adapter, peft_delta_weights, tiny_llama  # noqa: E402

from analysis.errors import RecipeError  # noqa: E402
from analysis.export import build_recipe, export_merge, recipe_sha256  # noqa: E402
from analysis.merge import merge_adapters  # noqa: E402


@pytest.fixture(scope="module")
def trio(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("peft_inputs")
    return [peft_adapter(tmp, "a", seed=1), peft_adapter(tmp, "b", seed=2, rank=2, alpha=4),
            peft_adapter(tmp, "c", seed=3, rank=8, alpha=8, targets=["q_proj", "v_proj"])]


def export(adapters, method, out, *, rank=None, params=None, weights=None):  # noqa: ANN001, ANN201
    res = merge_adapters(adapters, method, params=params, weights=weights)
    recipe = build_recipe(adapters, method, parameters=params, weights=weights, rank=rank)
    export_merge(res.modules, recipe, out, inputs=adapters)
    return res, recipe


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def test_inputs_read_by_peft_match_our_factors(trio):  # noqa: ANN001
    for a in trio:
        loaded = peft_delta_weights(a.path)
        for m, d in a.modules.items():
            assert rel(loaded[m], d.dense(torch.float64)) < 1e-6


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "cat", "knots", "tsv", "orthogonal"])
def test_exact_lowrank_methods_reload_to_the_intended_dW(trio, tmp_path, method):  # noqa: ANN001
    res, _ = export(trio, method, tmp_path / "out")
    loaded = peft_delta_weights(tmp_path / "out")
    assert set(loaded) == set(res.modules)
    for m, d in res.modules.items():
        assert rel(loaded[m], d.dense(torch.float64)) < 1e-5, m
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-llama" and cfg["lora_alpha"] == cfg["r"]


def test_dense_result_needs_rank_and_full_rank_linear_is_exact(trio, tmp_path):  # noqa: ANN001
    with pytest.raises(RecipeError, match="pass --rank"):
        export(trio, "ties", tmp_path / "nope")
    assert not (tmp_path / "nope").exists() and not list(tmp_path.glob(".nope*"))
    # full rank (32 >= every module width): the rank-R refactor of linear is exact
    res, _ = export(trio, "linear", tmp_path / "full", rank=32)
    loaded = peft_delta_weights(tmp_path / "full")
    for m, d in res.modules.items():
        assert rel(loaded[m], d.dense(torch.float64)) < 1e-5


def test_header_carries_the_recipe_sha_and_patterns_cover_mixed_ranks(trio, tmp_path):  # noqa: ANN001
    _, recipe = export(trio, "cat", tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), framework="pt") as f:
        assert f.metadata()["atlas_recipe_sha256"] == recipe_sha256(recipe)
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] and cfg["rank_pattern"] == cfg["alpha_pattern"]
    assert cfg["r"] == 6 and set(cfg["rank_pattern"].values()) == {14}


def peft_weighted(trio, tmp_path, combination_type, **kw):  # noqa: ANN001, ANN201
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(tiny_llama(), str(trio[0].path), adapter_name="a")
    model.load_adapter(str(trio[1].path), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [0.7, 1.3], "merged", combination_type=combination_type, **kw)
    return {full.removeprefix("base_model.model."): layer.get_delta_weight("merged").double()
            for full, layer in model.named_modules() if isinstance(layer, LoraLayer) and "merged" in layer.lora_A}


def test_cat_matches_peft_add_weighted_adapter(trio, tmp_path):  # noqa: ANN001
    ours = merge_adapters(trio[:2], "cat", weights=[0.7, 1.3])
    theirs = peft_weighted(trio, tmp_path, "cat")
    for m, d in ours.modules.items():
        assert rel(d.dense(torch.float64), theirs[m]) < 1e-5


def test_svd_matches_peft_add_weighted_adapter(trio, tmp_path):  # noqa: ANN001
    ours = merge_adapters(trio[:2], "svd", weights=[0.7, 1.3], params={"rank": 3})
    theirs = peft_weighted(trio, tmp_path, "svd", svd_rank=3)
    for m, d in ours.modules.items():
        assert d.rank == 3 and rel(d.dense(torch.float64), theirs[m]) < 1e-4


def test_zip_holds_the_export_and_kohya_delta_formats_reload(trio, tmp_path):  # noqa: ANN001
    import io
    import zipfile

    from safetensors.torch import load_file

    from analysis.export import zip_directory

    res = merge_adapters(trio, "ties")
    for fmt, weights_file in (("kohya", "lora.safetensors"), ("delta", "delta.safetensors")):
        recipe = build_recipe(trio, "ties", export_format=fmt, rank=None if fmt == "delta" else 32)
        out = export_merge(res.modules, recipe, tmp_path / fmt, inputs=trio)
        names = zipfile.ZipFile(io.BytesIO(zip_directory(out))).namelist()
        assert sorted(names) == sorted([f"{fmt}/{weights_file}", f"{fmt}/recipe.yaml"])
        tensors = load_file(str(out / weights_file))
        m = "model.layers.0.self_attn.q_proj"
        if fmt == "delta":
            got = tensors[f"{m}.delta"].double()
        else:
            key = "lora_unet_" + m.replace(".", "_")
            alpha, r = float(tensors[f"{key}.alpha"]), tensors[f"{key}.lora_down.weight"].shape[0]
            got = tensors[f"{key}.lora_up.weight"].double() @ tensors[f"{key}.lora_down.weight"].double() * alpha / r
            assert len({float(v) for k, v in tensors.items() if k.endswith(".alpha")}) == 1  # one uniform alpha
        assert rel(got, res.modules[m].dense(torch.float64)) < 1e-5
