"""The index as untrusted input: damaged files are one line naming them (queries) and repaired (scan);
deleted or changed adapters leave it; a scan killed with SIGKILL at any write leaves a valid or absent index
that the next scan completes; `compact` drops what left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from analysis.population.query import open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.store import IndexStore, PopulationIndexError
from analysis.population.synthetic import PlantedSpec, member, write_peft, write_population

SPEC = PlantedSpec(families=3, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1)
CONFIG = SketchConfig(k=8, seed=11, top=2)
REPO = Path(__file__).resolve().parents[3]


def _index(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    ads = tmp_path / "ads"
    write_population(SPEC, ads, n)
    scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS, part_rows=2)
    return ads, tmp_path / "idx"


def _state(idx: Path) -> tuple[dict, dict]:
    """(catalog {path: sha256 | error}, {sha256: vector bytes}) of a sound index: what two scans must agree on."""
    store = IndexStore.open(idx)
    paths, shas, errors = store.catalog_columns()
    pop = open_population(idx)
    return ({p: s or e for p, s, e in zip(paths, shas, errors)},
            {s: pop.vectors[i].tobytes() for i, s in enumerate(pop.sha256)})


def _damage(idx: Path, what: str) -> Path:
    part = IndexStore.open(idx).part_files()[0]
    cases = {
        "catalog-garbage": (idx / "catalog.parquet", b"garbage, not parquet"),
        "catalog-truncated": (idx / "catalog.parquet", (idx / "catalog.parquet").read_bytes()[:-40]),
        "catalog-empty": (idx / "catalog.parquet", b""),
        "part-garbage": (part, b"PAR1 garbage PAR1"),
        "part-truncated": (part, part.read_bytes()[: len(part.read_bytes()) // 2]),
        "part-empty": (part, b""),
    }
    if what in cases:
        target, data = cases[what]
        target.write_bytes(data)
        return target
    if what == "catalog-foreign":  # a valid Parquet file with other columns
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"x": [1, 2]}), idx / "catalog.parquet")
        return idx / "catalog.parquet"
    if what == "part-foreign":  # the sketch schema of another k
        import pyarrow.parquet as pq

        from analysis.population.store import sketch_schema

        pq.write_table(sketch_schema(SketchConfig(k=4)).empty_table(), part)
        return part
    if what == "meta-list":
        (idx / "meta.json").write_text("[1, 2]")
        return idx / "meta.json"
    if what == "meta-garbage":
        (idx / "meta.json").write_text("{not json")
        return idx / "meta.json"
    if what == "no-sketches":
        import shutil

        shutil.rmtree(idx / "sketches")
        return idx / "sketches"
    if what == "ann-garbage":
        target = next((idx / "ann").glob("*.faiss"))
        target.write_bytes(b"\x00" * target.stat().st_size)
        return target
    raise AssertionError(what)


DAMAGE = ["catalog-garbage", "catalog-truncated", "catalog-empty", "catalog-foreign", "part-garbage",
          "part-truncated", "part-empty", "part-foreign", "meta-list", "meta-garbage", "no-sketches", "ann-garbage"]


@pytest.mark.parametrize("what", DAMAGE)
def test_damaged_index_is_one_line_naming_the_file_and_scan_repairs_it(tmp_path, capsys, what) -> None:
    ads, idx = _index(tmp_path)
    clean = _state(idx)
    target = _damage(idx, what)
    query = str(sorted((ads / "f0001").iterdir())[0])
    for argv in (["neighbors", query, "--index", str(idx)], ["families", "--index", str(idx)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(target) in err[0], (argv, err)
        assert "Traceback" not in err[0]
    report = scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    assert report.repaired, report.to_json()
    assert report.total == 6 and not report.failed
    assert report.reused < 6 or what == "ann-garbage"  # never "reused" over sketches it could not read
    assert _state(idx) == clean  # the repaired index is the clean one
    assert main(["neighbors", query, "--index", str(idx), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["neighbors"]) == 5


def test_deleted_and_changed_adapters_leave_the_index_and_compact_drops_them(tmp_path, capsys) -> None:
    import shutil

    ads, idx = _index(tmp_path)
    gone, changed = sorted((ads / "f0000").iterdir())[:2]
    old_sha = IndexStore.open(idx).read_catalog()[str(changed)]["sha256"]
    shutil.rmtree(gone)
    write_peft(member(SPEC, 50)[0], changed)
    report = scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    assert (report.total, report.removed, report.sketched, report.reused) == (5, 1, 1, 4)
    pop = open_population(idx)
    assert str(gone) not in pop.paths and old_sha not in pop.sha256 and len(pop) == 5
    stored = IndexStore.open(idx).read_sketches(["norm"])
    assert len(stored) == 7  # 6 + the changed one: two rows are dead until compaction
    assert main(["compact", "--index", str(idx), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["kept"], out["dropped"]) == (5, 2)
    assert len(IndexStore.open(idx).read_sketches(["norm"])) == 5
    assert _state(idx)[0] == {p: s for p, s in zip(pop.paths, pop.sha256)}
    hits = main(["neighbors", pop.paths[0], "--index", str(idx), "--json"])
    assert hits == 0 and str(gone) not in capsys.readouterr().out


def test_scan_refuses_a_folder_that_is_not_an_index(tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "mine" / "meta.json").write_text("[]")  # even with a meta.json: it holds a file of the user's
    with pytest.raises(PopulationIndexError, match="not an index directory"):
        scan([tmp_path], tmp_path / "mine", config=CONFIG, scheduler=SYNCHRONOUS)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


KILLER = """
import os, signal, sys
from pathlib import Path
import analysis.population.store as store, analysis.population.ann as ann
from analysis.population.scan import scan
from analysis.population.sketch import SketchConfig
n = int(sys.argv[3])
calls = [0]
real = os.replace
def replace(a, b):
    calls[0] += 1
    if calls[0] == n:  # the n-th rename: its temporary is complete, the rename never happens
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
os.replace = replace
scan([sys.argv[1]], sys.argv[2], config=SketchConfig(k=8, seed=11, top=2), scheduler="synchronous", part_rows=2, batch_size=2)
print("finished", calls[0])
"""


def test_scan_killed_at_every_write_leaves_a_valid_or_absent_index_that_the_next_scan_completes(tmp_path) -> None:
    ads = tmp_path / "ads"
    write_population(SPEC, ads, 6)
    scan([ads], tmp_path / "ref", config=CONFIG, scheduler=SYNCHRONOUS)
    reference = _state(tmp_path / "ref")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLER, str(ads), str(tmp_path / "count"), "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    writes = int(done.stdout.split()[-1])  # renames of an uninterrupted first scan: meta, parts, catalog, ann
    assert writes >= 6, done.stdout
    points = sorted({1, 3, writes - 2, writes})  # meta.json, a part, the catalog, the neighbour index manifest
    for n in points:
        out = tmp_path / f"idx{n}"
        killed = subprocess.run([sys.executable, "-c", KILLER, str(ads), str(out), str(n)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, (n, killed.stderr[-500:])
        try:  # valid (possibly holding fewer adapters) or absent, never damaged
            partial = len(open_population(out, ann=False))
        except PopulationIndexError as exc:
            assert "not a population index" in str(exc), (n, str(exc))
            partial = None
        report = scan([ads], out, config=CONFIG, scheduler=SYNCHRONOUS)
        assert report.total == 6 and not report.failed, (n, report.to_json())
        assert _state(out) == reference, n
        assert partial is None or partial <= 6
    # a second kill, while the *second* scan (one changed adapter) writes its catalog
    target = sorted((ads / "f0002").iterdir())[0]
    write_peft(member(SPEC, 77)[0], target)
    out = tmp_path / f"idx{points[-1]}"
    before = _state(out)
    killed = subprocess.run([sys.executable, "-c", KILLER, str(ads), str(out), "2"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert _state(out)[0] == before[0]  # the previous catalog is still in place
    scan([ads], out, config=CONFIG, scheduler=SYNCHRONOUS)
    scan([ads], tmp_path / "ref", config=CONFIG, scheduler=SYNCHRONOUS)
    assert _state(out) == _state(tmp_path / "ref")
    assert np.isfinite(open_population(out).vectors).all()
