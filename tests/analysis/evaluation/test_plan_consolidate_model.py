"""`plan --model --data` and `consolidate --model` on a model folder the tool has never seen."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.model_folders import model_folder

from analysis.cli import main

TASKS = ["first", "second"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from helpers.tiny import save_peft_adapter
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("pc")
    folder = model_folder(root, "llama", seed=4)
    for k, task in enumerate(TASKS):
        base = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        save_peft_adapter(base, root / "adapters" / task, seed=30 + k, r=2, lora_alpha=4,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        (root / "data" / task).mkdir(parents=True)
        rows = [{"prompt": f"{task} {w}\nOutput:", "answer": w} for w in ("ab", "cd", "ef", "gh", "ij", "kl")]
        for split in ("train", "eval"):
            (root / "data" / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "folder": folder, "paths": [str(root / "adapters" / t) for t in TASKS]}


def test_plan_measures_on_the_model_given_and_records_it(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    out = setup["root"] / "plan"
    code = main(["plan", *setup["paths"], "--model", str(setup["folder"]), "--data", str(setup["root"] / "data"),
                 "--min-retention", "0.5", "--limit", "4", "--device", "cpu", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    plan = json.loads(captured.out)
    assert plan["measured"] and plan["measured_on"]["model"]["name"] == str(setup["folder"].resolve())
    assert [d["task"] for d in plan["measured_on"]["data"]] == TASKS and plan["measured_on"]["data"][0]["n"] == 4
    tried = [t for t in plan["trials"] if t["method"] != "-"]
    assert tried and all(t["nll_retention"] is not None for t in tried)  # the NLL screen ran on every merge
    for t in tried:  # exact match only where the screen passed
        screened_out = any(v is not None and v < 0.5 for v in t["nll_retention"].values())
        assert (t["accuracy"] is None) == screened_out, t


def test_consolidate_model_names_the_base_used_in_config_and_recipe(setup: dict[str, Any], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "cons"
    code = main(["consolidate", *setup["paths"], "--data", str(setup["root"] / "data"), "--model", str(setup["folder"]),
                 "--strategy", "multitask", "--steps", "2", "--rank", "2", "--batch-size", "2", "--limit", "2",
                 "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    config = json.loads((out / "adapter_config.json").read_text())
    recipe = json.loads((out / "recipe.json").read_text())
    assert config["base_model_name_or_path"] == recipe["base"] == str(setup["folder"].resolve())
    assert recipe["model"]["sha256"] and f"--model {setup['folder'].resolve()}" in recipe["command"]
    assert f"for base model {setup['folder'].resolve()}" in captured.out
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), str(out))


def test_undefined_retention_is_named_not_silently_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "consolidate"))
    from consolidate_tiny import CharTokenizer, make_adapters, write_tasks
    from helpers.tiny import tiny_llama

    from analysis.adapters import load_adapter
    from analysis.consolidate.run import run_consolidation
    from analysis.consolidate.train import ConsolidateConfig

    tasks = ["zero", "one"]
    data = write_tasks(tmp_path / "data", tasks, n=4)
    adapters = [load_adapter(p) for p in make_adapters(tmp_path / "ads", tasks)]
    rec = run_consolidation(tiny_llama(), CharTokenizer(), adapters, str(data),
                            ConsolidateConfig(strategy="multitask", steps=1, rank=2, batch_size=2), tmp_path / "out",
                            evaluate=lambda deltas, names: {t: 0.5 for t in names},
                            own_accuracy={"zero": 0.0, "one": 1.0})
    assert rec["retention"] == {"zero": None, "one": 0.5}
    assert rec["retention_undefined"] == ["zero"] and rec["mean_retention"] == 0.5
