"""`adapter-atlas inspect` on the committed sample set: modules in model order (layers.2 before layers.10, as the
app lists them), a folder of several PEFT adapters named as such, and the tool's own full-delta export refused
with what it is and what to do."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.workflow import AdapterSet

SAMPLE = Path(__file__).resolve().parents[3] / "sample_adapters"


def test_modules_are_listed_in_model_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(SAMPLE / "math_add"), "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["modules"]]
    layers = [int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in names]
    assert layers == sorted(layers) and max(layers) >= 10  # text order would put 10 right after 1
    assert names == AdapterSet.model_order(names)  # the order the app and the merge workflow use
    assert main(["inspect", str(SAMPLE / "math_add")]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("model.layers.")]
    assert rows == names  # the table in the same order


def test_folder_of_several_adapters_names_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("math_add", "format_date"):
        shutil.copytree(SAMPLE / name, tmp_path / "runs" / name)
    (tmp_path / "runs" / "notes").mkdir()  # not an adapter: not named
    assert main(["inspect", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds several adapters" in err and "(format_date, math_add)" in err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no adapter files" in capsys.readouterr().err


def test_own_delta_export_is_named_with_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "delta"
    assert main(["merge", str(SAMPLE / "format_date"), str(SAMPLE / "math_add"), "--method", "linear",
                 "--format", "delta", "--out", str(out)]) == 0
    capsys.readouterr()
    for target in (out, out / "delta.safetensors"):
        assert main(["inspect", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Adapter Atlas full-delta export" in err and "--format peft" in err
