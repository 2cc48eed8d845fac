"""`adapter-atlas overlap` and `cluster` through a real subprocess on real published adapters."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from analysis.commands.overlap import adapter_names

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "real_adapters"
GEMMA = REAL / "gemma3-270m-svg-lora"
GEMMA_DIRS = [GEMMA / "adapter", GEMMA / "adapter_curriculum_stage1", GEMMA / "adapter_seed123"]

needs_real = pytest.mark.skipif(not GEMMA.exists(), reason="../shared/real_adapters not present")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""


@needs_real
def test_overlap_json_on_three_real_gemma_adapters() -> None:
    proc = _cli("overlap", *map(str, GEMMA_DIRS), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["adapters"] == ["adapter", "adapter_curriculum_stage1", "adapter_seed123"]
    assert len(out["modules"]) >= 4
    for name, mod in out["modules"].items():
        cos = np.array(mod["cosine"])
        assert cos.shape == (3, 3) and np.allclose(cos, cos.T) and np.allclose(np.diag(cos), 1.0)
        for key in ("subspace_similarity", "energy_overlap"):
            m = np.array(mod[key])
            assert m.shape == (3, 3) and (m >= 0).all() and (m <= 1 + 1e-12).all()
        assert len(mod["norm"]) == 3 and all(n > 0 for n in mod["norm"])
        angles = mod["principal_angles_deg"]
        assert len(angles) == 3 and all(len(row) == 3 for row in angles)
        flat = [a for row in angles for cell in row for a in cell]
        assert flat and min(flat) >= 0.0 and max(flat) <= 90.0
        assert len(angles[0][1]) == min(mod["rank"][0], mod["rank"][1])
    # second route: cosine from the raw safetensors of one module (cosine is free of the positive LoRA scale)
    module = sorted(out["modules"])[0]
    dense = []
    for d in GEMMA_DIRS:
        t = load_file(str(d / "adapter_model.safetensors"))
        a = next(v for k, v in t.items() if k.endswith(f"{module}.lora_A.weight")).astype(np.float64)
        b = next(v for k, v in t.items() if k.endswith(f"{module}.lora_B.weight")).astype(np.float64)
        dense.append((b @ a).ravel())
    expect = np.dot(dense[0], dense[2]) / (np.linalg.norm(dense[0]) * np.linalg.norm(dense[2]))
    assert out["modules"][module]["cosine"][0][2] == pytest.approx(expect, abs=1e-6)


@needs_real
def test_overlap_readable_table_and_module_filter() -> None:
    proc = _cli("overlap", str(GEMMA_DIRS[0]), str(GEMMA_DIRS[2]), "--modules", r"q_proj$")
    assert proc.returncode == 0, proc.stderr
    assert "adapter vs adapter_seed123" in proc.stdout
    assert "q_proj" in proc.stdout and "v_proj" not in proc.stdout


@needs_real
def test_overlap_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    _one_line_error(_cli("overlap", str(GEMMA_DIRS[0]), str(missing)), "nope")
    sam = REAL / "sam-lora-custom" / "lora_rank4.safetensors"
    _one_line_error(_cli("overlap", str(GEMMA_DIRS[0]), str(sam)), "lora_rank4")
    _one_line_error(_cli("overlap", *map(str, GEMMA_DIRS[:2]), "--modules", "no_such_module"), "no_such_module")
    _one_line_error(_cli("overlap", str(GEMMA_DIRS[0])), "at least 2")


@needs_real
def test_cluster_json_and_refusals() -> None:
    proc = _cli("cluster", *map(str, GEMMA_DIRS), "--groups", "2", "--metric", "subspace", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["adapters"] == ["adapter", "adapter_curriculum_stage1", "adapter_seed123"]
    assert sorted(set(out["labels"])) == [0, 1] and len(out["labels"]) == 3
    assert np.array(out["linkage"]).shape == (2, 4) and sorted(out["order"]) == [0, 1, 2]
    D = np.array(out["distance"])
    assert np.allclose(D, D.T) and (D >= 0).all() and (D <= 1).all()
    # the two closest adapters (smallest off-diagonal distance) share a group
    i, j = np.unravel_index(np.argmin(D + 2 * np.eye(3)), D.shape)
    assert out["labels"][i] == out["labels"][j]
    _one_line_error(_cli("cluster", *map(str, GEMMA_DIRS), "--linkage", "ward"), "ward")
    _one_line_error(_cli("cluster", *map(str, GEMMA_DIRS), "--groups", "5"), "between 1 and 3")
    text = _cli("cluster", *map(str, GEMMA_DIRS), "--threshold", "0")
    assert text.returncode == 0 and "3 groups of 3 adapters" in text.stdout


def test_adapter_names_disambiguate_collisions(tmp_path: Path) -> None:
    for d in ("run1/adapter", "run2/adapter", "other"):
        (tmp_path / d).mkdir(parents=True)
    f = tmp_path / "run1" / "weights.safetensors"
    f.write_bytes(b"")
    names = adapter_names([tmp_path / "run1/adapter", tmp_path / "run2/adapter", tmp_path / "other", f])
    assert names == ["run1/adapter", "run2/adapter", "other", "weights"]
