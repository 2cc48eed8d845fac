"""The sample base saved with `save_pretrained` is "a model folder the tool has never seen": `evaluate --model
FOLDER` must give the sample route's numbers, and its NLL must equal PEFT's on the same rows.

Slow: the real base model (shared fixture) plus one save and one load of the folder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from analysis.cli import main

pytestmark = pytest.mark.slow
TASK, LIMIT = "format_date", 6


@pytest.fixture(scope="module")
def folder(base: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import copy

    from transformers import LlamaForCausalLM

    model, tok = base
    out = tmp_path_factory.mktemp("smol") / "smollm2-folder"
    config = copy.deepcopy(model.config)  # the de-quantized weights as a plain float32 checkpoint
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_folder_route_equals_sample_route_and_peft(base: tuple[Any, Any], folder: Path, samples: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = [str(samples / TASK), "--data", str(samples / "tasks" / TASK / "eval.jsonl"), "--limit", str(LIMIT),
              "--metric", "both", "--device", "cpu", "--json"]
    sample = _run(["evaluate", *common], capsys)
    mine = _run(["evaluate", *common, "--model", str(folder)], capsys)
    s, m = sample["results"][TASK][TASK], mine["results"][TASK][TASK]
    assert sample["model"]["kind"] == "sample" and mine["model"]["kind"] == "folder"
    assert m["correct"] == s["correct"] and m["nll"] == pytest.approx(s["nll"], rel=1e-5)
    # the independent route: transformers + PEFT on the saved folder, one unpadded row at a time
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True),
                                   str(samples / TASK)).eval()
    rows = [json.loads(line) for line in (samples / "tasks" / TASK / "eval.jsonl").read_text().splitlines()][:LIMIT]
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            a = tok(" " + r["answer"] + "\n", add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(pm(input_ids=torch.tensor([p + a])).logits[0].double(), -1)  # (t, vocab)
            total -= sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(a))
            count += len(a)
    assert math.isclose(m["nll"], total / count, rel_tol=1e-3)
    assert m["correct"] >= LIMIT // 2  # the adapter does its job on its own task


def test_gguf_file_route_equals_the_sample_route(base: tuple[Any, Any], samples: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The sample base's .gguf named as --model is loaded as a user's GGUF file: same numbers, its sha256."""
    from analysis.base_model import base_record, verified_gguf

    common = [str(samples / TASK), "--data", str(samples / "tasks" / TASK / "eval.jsonl"), "--limit", "3",
              "--metric", "both", "--device", "cpu", "--json"]
    sample = _run(["evaluate", *common], capsys)
    gguf = _run(["evaluate", *common, "--model", str(verified_gguf())], capsys)
    assert gguf["model"]["kind"] == "gguf" and gguf["model"]["sha256"] == base_record()["sha256"]
    assert sample["model"]["sha256"] == base_record()["sha256"]
    s, g = sample["results"][TASK][TASK], gguf["results"][TASK][TASK]
    assert g["correct"] == s["correct"] and g["nll"] == pytest.approx(s["nll"], rel=1e-6)
