"""Model specs (folder, cache id, refusals), the fit check and the CLI's one-line errors (exit 2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.model_folders import model_folder

from analysis.cli import main
from analysis.errors import IncompatibleAdaptersError, ModelLoadError
from analysis.evaluation import Evaluator, ModelSpec, load_data, load_model
from analysis.evaluation.model import classify


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("m"), "llama", seed=1)


def _rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_not_a_model_is_one_line_before_transformers(tmp_path: Path) -> None:
    (tmp_path / "adapters").mkdir()
    with pytest.raises(ModelLoadError, match="not a transformers model folder"):
        load_model(ModelSpec(str(tmp_path / "adapters")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(ModelSpec(str(tmp_path / "x.txt")))
    with pytest.raises(ModelLoadError, match="not a model id in the local Hugging Face cache.*nothing is downloaded"):
        load_model(ModelSpec("no-such-org/no-such-model"))
    with pytest.raises(ModelLoadError, match="device 'tpu'"):
        ModelSpec(device="tpu")


def test_folder_without_tokenizer_or_weights(folder: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "config.json", bare / "config.json")
    with pytest.raises(ModelLoadError, match="no weights files"):
        load_model(ModelSpec(str(bare)))
    shutil.copy(folder / "model.safetensors", bare / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        load_model(ModelSpec(str(bare)))


def test_cached_model_id_resolves_offline(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model id in the local HF cache layout loads from its snapshot; its identity is id + revision."""
    import huggingface_hub.constants as hf_constants

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(folder, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert classify(ModelSpec("acme/tiny-llama")) == ("cache", repo / "snapshots" / rev)
    ident = load_model(ModelSpec("acme/tiny-llama", device="cpu")).identity
    assert (ident.kind, ident.name, ident.revision, ident.sha256) == ("cache", "acme/tiny-llama", rev, None)
    with pytest.raises(ModelLoadError, match="not a model id in the local Hugging Face cache"):
        load_model(ModelSpec("acme/tiny-llama", revision="other"))


def test_chat_rows_equal_their_prompt_answer_twins(folder: Path, tmp_path: Path) -> None:
    """The folder's chat template renders user text raw and the assistant turn as " answer\\n": the chat file
    and its prompt/answer twin are the same rows, so every number must be equal."""
    pairs = [(f"Q{i}: copy x{i}\nOutput:", f"x{i}") for i in range(6)]
    _rows(tmp_path / "plain.jsonl", [{"prompt": p, "answer": a} for p, a in pairs])
    _rows(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
                                    for p, a in pairs])
    ev = Evaluator(load_model(ModelSpec(str(folder), device="cpu")), load_data([tmp_path], metric="both"))
    s = ev.score({})
    assert s["chat"].nll == pytest.approx(s["plain"].nll, rel=1e-9) and s["chat"].tokens == s["plain"].tokens
    assert s["chat"].correct == s["plain"].correct
    assert [e["prediction"] for e in s["chat"].examples] == [e["prediction"] for e in s["plain"].examples]


def test_fit_check_names_the_first_mismatch_and_the_base_warning(folder: Path, tmp_path: Path) -> None:
    from helpers.tiny import save_peft_adapter, tiny_llama

    from analysis.adapters import load_adapter

    save_peft_adapter(tiny_llama(hidden=32), tmp_path / "narrow", r=2, target_modules=["q_proj"])
    ev = Evaluator(load_model(ModelSpec(str(folder), device="cpu")), load_data([_rows(tmp_path / "t.jsonl",
                                                                                          [{"prompt": "a", "answer": "b"}])]))
    with pytest.raises(IncompatibleAdaptersError,
                       match=r"module model\.layers\.0\.self_attn\.q_proj has shape \(32, 32\) but .* has \(64, 64\)"):
        ev.check([load_adapter(tmp_path / "narrow")])
    save_peft_adapter(tiny_llama(), tmp_path / "other", r=2, target_modules=["q_proj"], base_model="meta/llama-9b")
    warnings = ev.check([load_adapter(tmp_path / "other")])
    assert len(warnings) == 1 and "meta/llama-9b" in warnings[0] and str(folder) in warnings[0]


def test_cli_errors_are_one_line_exit_2(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.tiny import save_peft_adapter, tiny_llama

    save_peft_adapter(tiny_llama(hidden=32), tmp_path / "narrow", r=2, target_modules=["q_proj"])
    good = _rows(tmp_path / "good.jsonl", [{"prompt": "a", "answer": "b"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    # the data is validated before the model loads: a bad row never waits for (or reaches) a model
    import analysis.evaluation as ev_pkg

    def no_model(*_: Any, **__: Any) -> Any:
        raise AssertionError("the model was loaded before the data was validated")

    monkeypatch.setattr(ev_pkg, "load_model", no_model)
    assert main(["evaluate", "--base", "--model", str(folder), "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"adapter-atlas: error: {bad}:2: ") and len([e for e in err if "error" in e]) == 1
    monkeypatch.undo()
    assert main(["evaluate", str(tmp_path / "narrow"), "--model", str(folder), "--data", str(good)]) == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines() if e.startswith("adapter-atlas")]
    assert len(err) == 1 and "q_proj has shape (32, 32)" in err[0] and "(64, 64)" in err[0]
    assert main(["evaluate", "--base", "--model", str(tmp_path), "--data", str(good)]) == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines() if e.startswith("adapter-atlas")]
    assert len(err) == 1 and "not a transformers model folder" in err[0]


def test_nll_text_task_and_table_output(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rows(tmp_path / "general.jsonl", [{"text": "the quick brown fox"}, {"text": "jumps over"}])
    assert main(["evaluate", "--base", "--model", str(folder), "--data", str(tmp_path / "general.jsonl"),
                 "--metric", "both"]) == 0
    out = capsys.readouterr().out
    assert f"model: {folder}" in out and "general" in out and "nll " in out and "(folder, LlamaForCausalLM" in out
    loaded = load_model(ModelSpec(str(folder), device="cpu"))
    tok = loaded.tokenizer
    ids = [tok("the quick brown fox")["input_ids"], tok("jumps over")["input_ids"]]
    with torch.no_grad():  # every token after the first, one unpadded forward per row
        total = sum(-float(torch.log_softmax(loaded.model(input_ids=torch.tensor([x])).logits[0].double(), -1)
                           [torch.arange(len(x) - 1), torch.tensor(x[1:])].sum()) for x in ids)
    expected = total / sum(len(x) - 1 for x in ids)
    got = Evaluator(loaded, load_data([tmp_path / "general.jsonl"], metric="nll")).score({})["general"]
    assert got.accuracy is None and got.nll == pytest.approx(expected, rel=1e-4)
