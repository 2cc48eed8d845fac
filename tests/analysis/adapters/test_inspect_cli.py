"""`adapter-atlas inspect`: aligned table, --json = describe_adapter, one-line error with exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.cli import main


def test_inspect_json_matches_header(real_adapters: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = real_adapters / "tashu014-lora-imdb-distilbert"
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "peft" and info["base_model"] == "distilbert-base-uncased"
    assert len(info["sha256"]) == 64 and len(info["modules"]) == 12
    m = info["modules"][0]
    assert m["name"] == "distilbert.transformer.layer.0.attention.q_lin"
    assert (m["rank"], m["shape"], m["scale"], m["kind"]) == (8, [768, 768], 2.0, "linear") and m["norm"] > 0
    assert {e["kind"] for e in info["extras"]} == {"modules_to_save"} and len(info["extras"]) == 4
    assert info["warnings"] == []


def test_inspect_table_is_aligned(real_adapters: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(real_adapters / "gpt2-tigrinya-lora")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("transformer.h.")]
    assert len(rows) == 36
    assert len({line.index(" 8 ") for line in rows}) == 1  # rank column lines up
    assert "768x3072" in out and "format:     peft" in out


def test_inspect_refusal_is_one_line(real_adapters: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(real_adapters / "sam-lora-custom" / "lora_rank4.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapter-atlas: error: ") and "\n" not in err and "lora_rank4.safetensors" in err
