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
    with pytest.raises(RecipeError, match=r"modules_to_save: 'base_model\.model\.score\.weight'.*--drop-extras"):
        run_merge(s, "linear")
    with pytest.raises(RecipeError, match="only a PEFT export can carry"):
        run_merge(AdapterSet.from_paths([heads["same1"], heads["same2"]]), "linear", export=ExportSpec(format="delta"))


def test_cli_refuses_then_drops_on_request(heads, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "analysis.cli", "merge", str(heads["same1"]), str(heads["other"]),
            "--method", "linear", "--no-preview", "--out", str(tmp_path / "m")]
    res = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "score.weight" in res.stderr
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


def test_identical_lora_biases_are_carried_and_peft_loads_them(tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from workflow_factories import tiny_llama

    for name in ("b1", "b2"):
        model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], lora_bias=True,
                                                        init_lora_weights=False))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("lora_B.default.bias"):
                    p.copy_(torch.arange(p.numel(), dtype=p.dtype) / 10)
        model.peft_config["default"].base_model_name_or_path = "tiny-llama"
        model.save_pretrained(str(tmp_path / name))
    run = run_merge(AdapterSet.from_paths([tmp_path / "b1", tmp_path / "b2"]), "linear", preview=False)
    assert set(run.evidence["extras"]["kinds"].values()) == {"lora_bias"}
    out = run.write(tmp_path / "merged")
    assert json.loads((out / "adapter_config.json").read_text())["lora_bias"] is True
    layer = PeftModel.from_pretrained(tiny_llama(), str(out)).base_model.model.model.layers[1].self_attn.q_proj
    assert torch.equal(layer.lora_B["default"].bias.detach(), torch.arange(32, dtype=torch.float32) / 10)
