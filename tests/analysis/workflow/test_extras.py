"""Extras in a merge: a real PEFT SEQ_CLS adapter's classifier head is carried when identical, the merge is
refused with one line when heads differ, and dropped (and recorded) on request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from workflow_factories import seq_cls_adapter, tiny_seq_cls

from analysis.errors import RecipeError
from analysis.merge.ops import truncate
from analysis.workflow import AdapterSet, ExportSpec, run_merge

REPO = Path(__file__).resolve().parents[3]
HEAD = "base_model.model.score.weight"


@pytest.fixture(scope="module")
def heads(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("seqcls")
    return {"same1": seq_cls_adapter(tmp / "same1", seed=1, head_seed=7),
            "same2": seq_cls_adapter(tmp / "same2", seed=2, head_seed=7),
            "other": seq_cls_adapter(tmp / "other", seed=3, head_seed=8)}


def test_identical_heads_are_carried_and_peft_loads_the_classifier(heads, tmp_path: Path) -> None:  # noqa: ANN001
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    s = AdapterSet.from_paths([heads["same1"], heads["same2"]])
    run = run_merge(s, "ties", export=ExportSpec(rank=6))
    assert run.evidence["extras"]["carried"] == [HEAD] and run.evidence["extras"]["kinds"][HEAD] == "modules_to_save"
    out = run.write(tmp_path / "merged")
    saved_head = load_file(str(heads["same1"] / "adapter_model.safetensors"))[HEAD]
    assert torch.equal(load_file(str(out / "adapter_model.safetensors"))[HEAD], saved_head)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    model = PeftModel.from_pretrained(tiny_seq_cls(seed=99), str(out))  # a base whose own head is different
    assert not torch.equal(tiny_seq_cls(seed=99).score.weight, saved_head)
    assert torch.equal(model.base_model.model.score.modules_to_save["default"].weight.detach(), saved_head)
    for full, layer in model.named_modules():  # and the LoRA part is the written rank-6 merge
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            module = full.removeprefix("base_model.model.")
            torch.testing.assert_close(layer.get_delta_weight("default").double(),
                                       truncate(run.result.modules[module], 6).dense(torch.float64),
                                       rtol=1e-4, atol=1e-5)


def test_different_heads_are_refused_in_one_line_naming_them(heads) -> None:  # noqa: ANN001
    s = AdapterSet.from_paths([heads["same1"], heads["other"]])
    run = run_merge(s, "linear")  # the data-free comparison does not depend on the extras policy
    assert run.evidence["tasks"] is not None and "score.weight" in run.evidence["extras"]["refused"]
    with pytest.raises(RecipeError, match=r"modules_to_save: 'base_model\.model\.score\.weight'.*extras: drop"):
        run.to_zip()
    assert "--drop" not in run.evidence["extras"]["refused"]  # face-neutral: each face names its own control
    delta = run_merge(AdapterSet.from_paths([heads["same1"], heads["same2"]]), "linear", export=ExportSpec(format="delta"))
    with pytest.raises(RecipeError, match="only a PEFT export can carry"):
        delta.to_zip()


def test_cli_refuses_then_drops_on_request(heads, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "analysis.cli", "merge", str(heads["same1"]), str(heads["other"]),
            "--method", "linear", "--no-preview", "--out", str(tmp_path / "m")]
    res = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "score.weight" in res.stderr
    assert "--drop-extras" in res.stderr
    assert not (tmp_path / "m").exists()
    res = subprocess.run([*base, "--drop-extras"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((tmp_path / "m" / "recipe.yaml").read_text())["export"]["extras"] == "drop"
    assert HEAD not in load_file(str(tmp_path / "m" / "adapter_model.safetensors"))
    evidence = json.loads((tmp_path / "m" / "preview.json").read_text())
    assert evidence["extras"]["dropped"] == [HEAD] and evidence["tasks"] is None
    replay = subprocess.run([sys.executable, "-m", "analysis.cli", "merge", "--recipe", str(tmp_path / "m"), "--out",
                             str(tmp_path / "again")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.yaml"):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_identical_dora_magnitudes_are_carried_and_peft_uses_them(tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from workflow_factories import tiny_llama

    for name in ("d1", "d2"):
        model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                        use_dora=True, init_lora_weights=False))
        model.peft_config["default"].base_model_name_or_path = "tiny-llama"
        model.save_pretrained(str(tmp_path / name))
    run = run_merge(AdapterSet.from_paths([tmp_path / "d1", tmp_path / "d2"]), "linear", preview=False)
    kinds = set(run.evidence["extras"]["kinds"].values())
    assert kinds == {"dora_magnitude"} and len(run.evidence["extras"]["carried"]) == 4
    out = run.write(tmp_path / "merged")
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    loaded = PeftModel.from_pretrained(tiny_llama(), str(out)).base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(loaded.lora_magnitude_vector["default"].weight.detach(),
                       load_file(str(tmp_path / "d1" / "adapter_model.safetensors"))[key])


def _bias_adapter(out: Path, *, alpha: float, rslora: bool, factor: float, bias_shift: float = 0.0) -> Path:
    """A real PEFT `lora_bias` adapter on q_proj (r=4): the same random A, and B and bias divided by `factor`,
    so adapters whose `factor` equals their scale ratio add the same output."""
    from helpers.tiny import tiny_llama
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=alpha, use_rslora=rslora, target_modules=["q_proj"],
                                                    lora_bias=True, init_lora_weights=False))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "lora_" in n:
                value = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(value if "lora_A" in n else value / factor + (bias_shift if n.endswith("bias") else 0.0))
    model.peft_config["default"].base_model_name_or_path = "tiny-llama"
    model.save_pretrained(str(out))
    return out


def _q_proj_outputs(paths: list[Path], x: torch.Tensor) -> list[torch.Tensor]:
    from helpers.tiny import tiny_llama
    from peft import PeftModel

    with torch.no_grad():
        return [PeftModel.from_pretrained(tiny_llama(), str(p)).base_model.model.model.layers[1].self_attn.q_proj(x)
                for p in paths]


def test_lora_biases_are_carried_scaled_so_the_layer_output_is_kept(tmp_path: Path) -> None:
    """b1: alpha 8, r 4 (scale 2); b2: rsLoRA alpha 8, r 4 (scale 4), B and bias halved: the same layer. The
    merged layer (export at scaling 1) must give the same output as either input, bias included."""
    b1 = _bias_adapter(tmp_path / "b1", alpha=8, rslora=False, factor=1.0)
    b2 = _bias_adapter(tmp_path / "b2", alpha=8, rslora=True, factor=2.0)
    s = AdapterSet.from_paths([b1, b2])
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.bias"
    assert [a.modules["model.layers.1.self_attn.q_proj"].scale for a in s.adapters] == [2.0, 4.0]
    for method, weights in (("linear", [0.5, 0.5]), ("task_arithmetic", [0.25, 0.75])):
        run = run_merge(s, method, weights=weights, preview=False)
        assert run.evidence["extras"]["kinds"][key] == "lora_bias" and key in run.evidence["extras"]["carried"]
        out = run.write(tmp_path / f"merged-{method}")
        assert json.loads((out / "adapter_config.json").read_text())["lora_bias"] is True
        x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
        want, same, got = _q_proj_outputs([b1, b2, out], x)
        torch.testing.assert_close(same, want, rtol=1e-5, atol=1e-5)  # the two inputs are the same layer
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # and so is the merge, bias offset included
        stored = load_file(str(b1 / "adapter_model.safetensors"))[key]
        torch.testing.assert_close(load_file(str(out / "adapter_model.safetensors"))[key], 2.0 * stored)


def test_lora_biases_that_differ_once_scaled_refuse_the_export_not_the_comparison(tmp_path: Path) -> None:
    """Byte-equal stored biases under different scales add different offsets: refused at export time only."""
    b1 = _bias_adapter(tmp_path / "b1", alpha=8, rslora=False, factor=1.0)
    b3 = _bias_adapter(tmp_path / "b3", alpha=4, rslora=False, factor=1.0)  # same bytes, scale 1 instead of 2
    run = run_merge(AdapterSet.from_paths([b1, b3]), "linear", preview=True)  # the comparison runs
    assert run.evidence["tasks"] is not None and "lora_bias" in run.evidence["extras"]["refused"]
    with pytest.raises(RecipeError, match=r"non-LoRA tensors differ.*lora_bias.*export\.extras: drop"):
        run.write(tmp_path / "m")
    assert not (tmp_path / "m").exists()
