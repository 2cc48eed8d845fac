"""`evaluate --model FOLDER --data FILE` against an independent transformers + PEFT evaluation.

Two architectures the tool has never seen (tiny random-weight Llama and GPT-2 folders with a byte-level
tokenizer, saved like any local model) and a PEFT adapter saved by PEFT itself. The reference route loads
the folder with transformers, wraps it with `PeftModel.from_pretrained`, generates greedily one row at a time
(no padding) and computes each answer's NLL from one unpadded forward pass; it shares no code with
`analysis.evaluation`. The data's answers are the reference's own greedy outputs on half the rows (and
wrong on the other half), so the exact-match count is a number that could differ, not a trivial zero.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.model_folders import model_folder

from analysis.cli import main

TARGETS = {"llama": dict(target_modules=["q_proj", "v_proj", "o_proj"]),
           "gpt2": dict(target_modules=["c_attn"], fan_in_fan_out=True),
           "qwen2": dict(target_modules=["q_proj", "k_proj", "down_proj"])}
N_ROWS = 12


def _reference_model(folder: Path, adapter: Path) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).eval(), tok


@torch.no_grad()
def _reference_answer(pm: Any, tok: Any, prompt: str) -> str:
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])  # (1, t)
    out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def _reference_nll(pm: Any, tok: Any, rows: list[dict[str, str]]) -> float:
    total, count = 0.0, 0
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(" " + r["answer"] + "\n", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])  # (1, t)
        logp = torch.log_softmax(pm(input_ids=ids).logits[0].double(), dim=-1)  # (t, vocab)
        total -= sum(float(logp[len(p) - 1 + k, tok_id]) for k, tok_id in enumerate(a))
        count += len(a)
    return total / count


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from helpers.tiny import save_peft_adapter
    from transformers import AutoModelForCausalLM

    arch, root = request.param, tmp_path_factory.mktemp(request.param)
    folder = model_folder(root, arch, seed=3)
    base = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    save_peft_adapter(base, root / "adapter", seed=5, r=4, lora_alpha=16, base_model=str(folder),
                      **TARGETS[arch])
    pm, tok = _reference_model(folder, root / "adapter")
    rows, right = [], 0
    for i in range(N_ROWS):
        prompt = f"Task {i}: copy abc{i}\nOutput:"
        ref = _reference_answer(pm, tok, prompt)
        keep = i % 2 == 0 and ref != ""
        right += keep
        rows.append({"prompt": prompt, "answer": ref if keep else "never-this"})
    data = root / "mytask.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"folder": folder, "adapter": root / "adapter", "data": data, "rows": rows, "right": right,
            "nll": _reference_nll(pm, tok, rows)}


def test_cli_json_agrees_with_transformers_and_peft(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    code = main(["evaluate", str(setup["adapter"]), "--model", str(setup["folder"]), "--data", str(setup["data"]),
                 "--metric", "both", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["tasks"] == ["mytask"] and list(out["results"]) == ["adapter"]
    res = out["results"]["adapter"]["mytask"]
    assert setup["right"] >= 2  # the count is not trivially zero
    assert res["n"] == N_ROWS and res["correct"] == setup["right"]
    assert res["accuracy"] == pytest.approx(setup["right"] / N_ROWS)
    assert math.isclose(res["nll"], setup["nll"], rel_tol=1e-3), (res["nll"], setup["nll"])
    assert res["perplexity"] == pytest.approx(math.exp(res["nll"]))
    # whose numbers: the folder's weights hash and each data file's hash and row count
    assert out["model"]["kind"] == "folder" and out["model"]["name"] == str(setup["folder"].resolve())
    import hashlib

    weights = hashlib.sha256((setup["folder"] / "model.safetensors").read_bytes()).hexdigest()
    assert out["model"]["sha256"] == weights and out["model"]["files"] == [{"file": "model.safetensors",
                                                                             "sha256": weights}]

    assert out["data"] == [{"task": "mytask", "file": str(setup["data"].resolve()), "rows": N_ROWS, "n": N_ROWS,
                            "metric": "both", "kind": "answer",
                            "sha256": hashlib.sha256(setup["data"].read_bytes()).hexdigest()}]
    assert out["warnings"] == []  # the adapter names this folder as its base


def test_weights_bit_identical_after_evaluation(setup: dict[str, Any]) -> None:
    from analysis.adapters import load_adapter
    from analysis.evaluation import Evaluator, ModelSpec, load_data, load_model

    loaded = load_model(ModelSpec(str(setup["folder"]), device="cpu"))
    before = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    ev = Evaluator(loaded, load_data([setup["data"]], metric="both"))
    adapter = load_adapter(setup["adapter"])
    with_adapter = ev.score(adapter.modules)["mytask"]
    bare = ev.score({})["mytask"]
    assert with_adapter.nll != pytest.approx(bare.nll)  # the deltas were really applied
    after = loaded.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
