"""Export options every face shares: `--dtype`, `--missing-modules`, the diffusers format; recorded in the
recipe, replayed to identical bytes, stated in the CLI summary and preview.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd_tiny import ATTN, TE, write_kohya_input  # noqa: E402

from analysis.errors import IncompatibleAdaptersError, RecipeError  # noqa: E402
from analysis.export import build_recipe, recipe_to_yaml  # noqa: E402
from analysis.workflow import AdapterSet, ExportSpec, run_merge  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
A = {f"{ATTN}.attn1.to_q": (4, 4.0), f"{ATTN}.attn1.to_out.0": (8, 12.0), f"{TE}.0.self_attn.q_proj": (2, 2.0)}
B = {f"{ATTN}.attn1.to_q": (4, 2.0), f"{TE}.0.self_attn.q_proj": (4, 4.0)}
ONLY_A = f"{ATTN}.attn1.to_out.0"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("opt_inputs")
    return [write_kohya_input(tmp / "a.safetensors", A, 1), write_kohya_input(tmp / "b.safetensors", B, 2)]


def test_zero_rule_merges_a_missing_module_from_the_inputs_that_have_it(paths):  # noqa: ANN001
    aset = AdapterSet.from_paths(paths)
    run = run_merge(aset, "linear", None, [0.5, 0.5], ExportSpec(format="kohya"), preview=False)
    want = 0.5 * aset[0].modules[ONLY_A].dense(torch.float64)  # B's update there counts as zero
    assert torch.allclose(run.result.modules[ONLY_A].dense(torch.float64), want, atol=1e-12)
    policy = run.evidence["modules"]
    assert policy["policy"] == "zero" and policy["not_shared"] == [{"module": ONLY_A, "lacking": ["b"]}]
    assert policy["total"] == 3 and policy["shared"] == 2


def test_shared_rule_leaves_the_module_out_and_reports_the_energy_left_out(paths):  # noqa: ANN001
    aset = AdapterSet.from_paths(paths)
    run = run_merge(aset, "linear", None, None, ExportSpec(format="diffusers", missing_modules="shared"), preview=False)
    assert ONLY_A not in run.result.modules and len(run.result.modules) == 2
    energy = run.evidence["modules"]["left_out_energy"]
    norms = {m: d.frobenius_norm() ** 2 for m, d in aset[0].modules.items()}
    assert energy["a"] == pytest.approx(norms[ONLY_A] / sum(norms.values())) and energy["b"] == 0.0
    assert run.recipe.missing_modules == "shared"


def test_refuse_rule_names_the_module(paths):  # noqa: ANN001
    with pytest.raises(IncompatibleAdaptersError, match=r"1 of 3 not shared.*to_out\.0.*lacking in b"):
        run_merge(AdapterSet.from_paths(paths), "linear", None, None, ExportSpec(missing_modules="refuse"))


def test_defaults_are_left_out_of_the_recipe_so_older_recipes_replay_unchanged(paths):  # noqa: ANN001
    aset = AdapterSet.from_paths(paths)
    text = recipe_to_yaml(build_recipe(list(aset.adapters), "linear"))
    assert "dtype" not in text and "missing_modules" not in text
    data = yaml.safe_load(recipe_to_yaml(build_recipe(list(aset.adapters), "linear", dtype="bf16",
                                                      missing_modules="shared", export_format="diffusers")))
    assert data["export"]["dtype"] == "bf16" and data["missing_modules"] == "shared"
    with pytest.raises(RecipeError, match="export.dtype"):
        build_recipe(list(aset.adapters), "linear", dtype="fp8")


def test_cli_states_the_rule_and_the_dtype_and_replays_to_identical_bytes(paths, tmp_path):  # noqa: ANN001
    out = tmp_path / "merged"
    res = cli("merge", *map(str, paths), "--method", "linear", "--format", "kohya", "--dtype", "fp16",
              "--missing-modules", "shared", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "stored as fp16: storage error" in res.stdout
    assert f"1 of 3 not shared by every input ({ONLY_A}; lacking in b)" in res.stdout and "left out" in res.stdout
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["export"]["dtype"] == "fp16" and recipe["missing_modules"] == "shared"
    preview = json.loads((out / "preview.json").read_text())
    assert preview["modules"]["policy"] == "shared" and preview["export"]["dtype"] == "fp16"
    again = tmp_path / "again"
    res = cli("merge", "--recipe", str(out / "recipe.yaml"), "--out", str(again))
    assert res.returncode == 0, res.stderr
    for name in ("lora.safetensors", "recipe.yaml", "preview.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    res = cli("merge", *map(str, paths), "--method", "linear", "--missing-modules", "refuse", "--out",
              str(tmp_path / "no"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "to_out.0" in res.stderr
    assert not (tmp_path / "no").exists()


def test_overlap_names_the_modules_it_does_not_compare(paths):  # noqa: ANN001
    res = cli("overlap", *map(str, paths))
    assert res.returncode == 0, res.stderr
    assert f"1 of 3 not shared by every input ({ONLY_A}; lacking in b): not compared (compared on the 2" in res.stdout
    payload = json.loads(cli("overlap", *map(str, paths), "--json").stdout)
    assert payload["module_policy"]["not_shared"] == [{"module": ONLY_A, "lacking": ["b"]}]
    assert sorted(payload["modules"]) == sorted(m for m in A if m in B)


def _lora(n_out: int, n_in: int, rank: int = 2):  # noqa: ANN202
    from analysis.adapters.model import LowRankDelta

    g = torch.Generator().manual_seed(n_out + n_in)
    return LowRankDelta(A=torch.randn(rank, n_in, generator=g), B=torch.randn(n_out, rank, generator=g), scale=1.0)


@pytest.mark.parametrize(("width", "family", "arch"), [(768, "sd_v1", "stable-diffusion-v1/lora"),
                                                       (1024, "sd_v2", "stable-diffusion-v2-512/lora"),
                                                       (2048, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora")])
def test_kohya_header_names_the_base_family_from_the_cross_attention_width(width, family, arch):  # noqa: ANN001
    from analysis.export.kohya import kohya_files

    modules = {f"{ATTN}.attn2.to_k": _lora(320, width), f"{ATTN}.attn1.to_q": _lora(320, 320, 4)}
    tensors, meta = kohya_files(modules, rank=None)
    assert meta["ss_base_model_version"] == family and meta["modelspec.architecture"] == arch
    assert meta["ss_v2"] == str(family == "sd_v2") and meta["modelspec.sai_model_spec"] == "1.0.1"
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {float(meta["ss_network_alpha"])}


def test_sdxl_text_encoders_get_kohya_te1_te2_names():
    from analysis.export.kohya import kohya_files

    modules = {"text_encoder.text_model.encoder.layers.0.mlp.fc1": _lora(16, 8),
               "text_encoder_2.text_model.encoder.layers.0.mlp.fc1": _lora(16, 8)}
    tensors, meta = kohya_files(modules, rank=None)
    assert {k.split(".")[0] for k in tensors} == {"lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                                  "lora_te2_text_model_encoder_layers_0_mlp_fc1"}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_diffusers_format_refuses_modules_of_no_diffusion_pipeline():
    from analysis.export.diffusers import diffusers_files

    with pytest.raises(RecipeError, match=r"model.layers.0.self_attn.q_proj: not a module of a diffusers UNet"):
        diffusers_files({"model.layers.0.self_attn.q_proj": _lora(8, 8)}, rank=None)
