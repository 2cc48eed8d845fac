"""The faiss file is untrusted input: faiss can abort the process on a damaged file, so its size and sha256 are
recorded when it is written and checked before faiss reads a byte. A truncated, garbage or bit-flipped file is
one line naming it from `neighbors` and `families` (run as processes, so an abort would show as a signal), and
the next scan rebuilds it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.population.ann import FLAT_MAX, read_manifest, sync_index
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.store import IndexStore
from analysis.population.synthetic import PlantedSpec, write_population

SPEC = PlantedSpec(families=3, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1)
CONFIG = SketchConfig(k=8, seed=11, top=2)
REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _faiss_file(idx: Path) -> Path:
    (entry,) = read_manifest(IndexStore.open(idx)).values()
    return idx / "ann" / entry["file"]


def _damage(target: Path, how: str) -> None:
    data = bytearray(target.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbage":  # same size: only the sha256 tells
        data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "bit-flipped":
        for at in (8, 20, len(data) // 2):  # the header's sizes and a byte of the body
            data[at] ^= 0x10
    target.write_bytes(bytes(data))


def _one_line_exit_2(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "analysis.cli", *argv], capture_output=True, text=True, env=ENV,
                          timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # a C++ abort would be -6, a segfault -11
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_manifest_records_each_files_size_and_sha256(tmp_path: Path) -> None:
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    (entry,) = read_manifest(IndexStore.open(idx)).values()
    data = (idx / "ann" / entry["file"]).read_bytes()
    assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (idx / "ann").iterdir()) == sorted([entry["file"], "manifest.json"])


@pytest.mark.parametrize("how", ["truncated", "garbage", "bit-flipped"])
def test_damaged_faiss_file_is_one_line_and_scan_rebuilds_it(tmp_path: Path, how: str) -> None:
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    target = _faiss_file(idx)
    clean = target.read_bytes()
    _damage(target, how)
    query = str(sorted((ads / "f0001").iterdir())[0])
    for argv in (["neighbors", query, "--index", str(idx)], ["families", "--index", str(idx)]):
        line = _one_line_exit_2(*argv)
        assert str(target) in line and "scan" in line, line
    done = subprocess.run([sys.executable, "-m", "analysis.cli", "scan", str(ads), "--out", str(idx), "--scheduler",
                           SYNCHRONOUS, "--k", "8", "--seed", "11", "--top", "2", "--json"], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["reused"] == 6 and report["ann"]["rebuilt"] == 1
    assert any(str(target) in line for line in report["repaired"]), report["repaired"]
    assert _faiss_file(idx).read_bytes() == clean and not target.exists()  # rebuilt, under a new name
    hits = subprocess.run([sys.executable, "-m", "analysis.cli", "neighbors", query, "--index", str(idx), "--json"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert hits.returncode == 0 and len(json.loads(hits.stdout)["neighbors"]) == 5


def test_damaged_ivf_file_is_one_line_and_rebuilt(tmp_path: Path) -> None:
    """The inverted-file index (beyond FLAT_MAX) the same way: read in a child process, which must not die."""
    idx = tmp_path / "idx"
    n = FLAT_MAX + 1
    store = IndexStore.for_scan(idx, CONFIG)
    vectors = np.random.default_rng(0).standard_normal((n, CONFIG.k ** 2)).astype(np.float32)  # (n, k^2)
    shas = [hashlib.sha256(f"a{i}".encode()).hexdigest() for i in range(n)]
    store.append_sketches([{"sha256": s, "layout": "L", "base_model": "b", "format": "peft", "norm": 1.0,
                            "vector": v, "modules": [], "module_norm": [], "module_top_sv": []}
                           for s, v in zip(shas, vectors)])
    store.write_catalog({"path": f"/fleet/a{i:06d}", "name": "", "signature": "x", "sha256": s, "error": None}
                        for i, s in enumerate(shas))
    assert sync_index(store)["rebuilt"] == 1
    target = _faiss_file(idx)
    assert read_manifest(store)[target.name.split("-")[0]]["kind"] == "ivf"
    _damage(target, "bit-flipped")
    line = _one_line_exit_2("families", "--index", str(idx))
    assert str(target) in line and "sha256" in line, line
    store = IndexStore.for_scan(idx, CONFIG)
    report = sync_index(store)
    assert report["rebuilt"] == 1 and any(str(target) in r for r in store.repairs), store.repairs
    child = subprocess.run([sys.executable, "-c", "import sys\nfrom analysis.population.ann import load_indexes\n"
                            "from analysis.population.store import IndexStore\n"
                            "print(len(next(iter(load_indexes(IndexStore.open(sys.argv[1])).values()))))", str(idx)],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert child.returncode == 0 and child.stdout.strip() == str(n), child.stderr[-2000:]


def test_a_manifest_without_sha256_is_one_line_and_rebuilt(tmp_path: Path) -> None:
    """An index written before sizes and digests were recorded (manifest version 1) is not read unchecked."""
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    manifest = idx / "ann" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["version"] = 1
    for entry in data["groups"].values():
        entry.pop("sha256")
    manifest.write_text(json.dumps(data))
    line = _one_line_exit_2("families", "--index", str(idx))
    assert str(manifest) in line, line
    report = scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    assert report.reused == 6 and report.ann["rebuilt"] == 1 and report.repaired
    assert read_manifest(IndexStore.open(idx))  # version 2 again


@pytest.mark.parametrize("what", ["fifo", "folder"])
def test_a_faiss_file_that_is_not_a_file_is_one_line(tmp_path: Path, what: str) -> None:
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    target = _faiss_file(idx)
    target.unlink()
    os.mkfifo(target) if what == "fifo" else target.mkdir()
    line = _one_line_exit_2("families", "--index", str(idx))
    assert str(target) in line and "not a regular file" in line, line
    report = scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    assert report.ann["rebuilt"] == 1 and not target.exists() and _faiss_file(idx).is_file()
