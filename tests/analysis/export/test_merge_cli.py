"""`adapter-atlas merge` end to end, through a subprocess: export, replay to identical bytes, refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "merge"))
from merge_factories import peft_adapter, peft_delta_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# each test starts several `adapter-atlas merge` processes (torch imported every time): 10-110 s on 2 cores
pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", "merge", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("cli_inputs")
    return [peft_adapter(tmp, "a", seed=1), peft_adapter(tmp, "b", seed=2), peft_adapter(tmp, "c", seed=3, rank=2)]


def test_list_methods_shows_declared_parameters():
    res = cli("--list-methods")
    assert res.returncode == 0
    assert "isolation:" in res.stdout and "granularity (str, default 'entries' one of entries|rows|columns)" in res.stdout


def test_merge_exports_what_peft_loads_and_replays_to_identical_bytes(inputs, tmp_path):  # noqa: ANN001
    paths = [str(a.path) for a in inputs]
    out = tmp_path / "iso"
    res = cli(*paths, "--method", "isolation", "--param", "granularity=rows", "--param", "p=0.1", "--out", str(out),
              "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["modules"] == 8 and [t["name"] for t in summary["tasks"]] == ["a", "b", "c"]
    assert {p.name for p in out.iterdir()} == {"adapter_model.safetensors", "adapter_config.json", "recipe.yaml",
                                               "preview.json"}
    assert set(peft_delta_weights(out)) == set(inputs[0].modules)
    again = tmp_path / "again"
    res = cli("--recipe", str(out / "recipe.yaml"), "--out", str(again))
    assert res.returncode == 0, res.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.yaml", "preview.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_changed_input_is_refused_on_replay(inputs, tmp_path):  # noqa: ANN001
    src = tmp_path / "src"
    copies = []
    for a in inputs[:2]:
        (src / a.name).mkdir(parents=True)
        for f in a.path.iterdir():
            (src / a.name / f.name).write_bytes(f.read_bytes())
        copies.append(str(src / a.name))
    out = tmp_path / "lin"
    assert cli(*copies, "--method", "linear", "--out", str(out), "--no-preview").returncode == 0
    with open(src / "b" / "adapter_config.json", "a") as f:
        f.write("\n")
    res = cli("--recipe", str(out / "recipe.yaml"), "--out", str(tmp_path / "replay"))
    assert res.returncode == 2 and not (tmp_path / "replay").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "recipe input 'b'" in lines[0] and "changed" in lines[0]


def test_refusals_are_one_line_and_leave_nothing(inputs, tmp_path):  # noqa: ANN001
    paths = [str(a.path) for a in inputs]
    for args, needle in [
        (("--method", "nope"), "unknown merge method 'nope'; valid:"),
        (("--method", "ties", "--format", "peft", "--rank", "0"), "--rank: 0 is out of range"),
        (("--method", "linear", "--weights", "0,0,0"), "every weight is 0"),
        (("--method", "linear", "--weights", "1,inf,1"), "weight 2 is inf"),
        (("--method", "linear", "--weights", "1,nan,1"), "weight 2 is nan"),
        (("--method", "ties", "--param", "density=2"), "above the maximum"),
        (("--method", "linear", "--weights", "1,2"), "2 weights given for 3 adapters"),
    ]:
        res = cli(*paths, *args, "--out", str(tmp_path / "x"))
        assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "x").exists()
    (tmp_path / "exists").mkdir()
    res = cli(*paths, "--method", "linear", "--out", str(tmp_path / "exists"))
    assert res.returncode == 2 and "--force" in res.stderr
    res = cli(*paths, "--method", "ties", "--rank", "4", "--format", "kohya", "--out", str(tmp_path / "exists"),
              "--force", "--no-preview")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "exists" / "lora.safetensors").exists()


def test_dense_merge_exports_at_an_automatic_rank_and_replays_to_identical_bytes(inputs, tmp_path):  # noqa: ANN001
    import yaml

    paths = [str(a.path) for a in inputs]
    out = tmp_path / "ties"
    res = cli(*paths, "--method", "ties", "--target-error", "0.3", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    export = yaml.safe_load((out / "recipe.yaml").read_text())["export"]
    assert export["rank_mode"] == "auto" and export["target_error"] == 0.3 and export["rank"] == summary["rank"]
    assert summary["export"]["relative_error"] <= 0.3 and summary["export"]["reached"]
    assert json.loads((out / "preview.json").read_text())["export"] == summary["export"]
    again = tmp_path / "again"
    assert cli("--recipe", str(out / "recipe.yaml"), "--out", str(again)).returncode == 0
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.yaml", "preview.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
