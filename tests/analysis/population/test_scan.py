"""The Dask scan: a two-worker LocalCluster and the synchronous scheduler agree bit for bit; reruns are
incremental; unreadable files are listed, never fatal."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.store import IndexStore, PopulationIndexError, vectors_of
from analysis.population.synthetic import PlantedSpec, member, write_peft, write_population

SPEC = PlantedSpec(families=3, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1)
CONFIG = SketchConfig(k=8, seed=11, top=2)


@pytest.fixture(scope="module")
def client():
    """Two in-process workers (processes=False: spawning two torch-importing processes costs ~15 s here)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0")
    with Client(cluster) as c:
        yield c
    cluster.close()


def _population(root: Path, n: int = 12) -> Path:
    write_population(SPEC, root / "ads", n)
    (root / "ads" / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    (root / "ads" / "f0000" / "notes.pt").write_bytes(b"\x80\x02pickle")
    return root / "ads"


def _adds_up(*reports) -> None:
    for r in reports:
        assert r.total == r.sketched + r.reused + r.duplicates + len(r.failed), r.to_json()


def _sketches(out: Path) -> dict[str, np.ndarray]:
    table = IndexStore.open(out).read_sketches(["vector"])
    return dict(zip(table.column("sha256").to_pylist(), vectors_of(table)))


def test_cluster_and_synchronous_agree_bit_for_bit(tmp_path: Path, client) -> None:
    ads = _population(tmp_path)
    sync = scan([ads], tmp_path / "sync", config=CONFIG, scheduler=SYNCHRONOUS, batch_size=5)
    dist = scan([ads], tmp_path / "dist", config=CONFIG, client=client, batch_size=3)
    assert sync.sketched == dist.sketched == 12
    assert sync.failed == dist.failed
    a, b = _sketches(tmp_path / "sync"), _sketches(tmp_path / "dist")
    assert sorted(a) == sorted(b) and len(a) == 12
    for sha in a:
        assert a[sha].tobytes() == b[sha].tobytes()
    cat_a = IndexStore.open(tmp_path / "sync").read_catalog()
    cat_b = IndexStore.open(tmp_path / "dist").read_catalog()
    assert cat_a == cat_b
    # the same cluster named by its scheduler address, as `--scheduler ADDRESS` does: no other code path
    by_address = scan([ads], tmp_path / "addr", config=CONFIG, scheduler=client.scheduler.address)
    c = _sketches(tmp_path / "addr")
    assert by_address.sketched == 12 and all(c[sha].tobytes() == a[sha].tobytes() for sha in a)


def test_unreadable_files_are_listed_with_one_line_reasons(tmp_path: Path) -> None:
    ads = _population(tmp_path, 4)
    report = scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    failed = dict(report.failed)
    assert set(failed) == {str(ads / "broken.safetensors"), str(ads / "f0000" / "notes.pt")}
    assert all("\n" not in r and r for r in failed.values())
    assert "broken.safetensors" in failed[str(ads / "broken.safetensors")]
    assert report.sketched == 4 and report.total == 6
    _adds_up(report)


def test_rerun_sketches_only_new_and_changed_files(tmp_path: Path) -> None:
    ads = _population(tmp_path, 6)
    first = scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    assert first.sketched == 6
    again = scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    # the two unreadable files are counted once, as failed, not also as reused
    assert (again.sketched, again.reused, len(again.failed), again.total) == (0, 6, 2, 8)
    _adds_up(first, again)
    # change one adapter's content, add a new one, and add a byte-identical copy of another
    changed, source = sorted((ads / "f0001").iterdir())[0], sorted((ads / "f0002").iterdir())[0]
    write_peft(member(SPEC, 100)[0], changed)
    write_peft(member(SPEC, 200)[0], ads / "new")
    copy = ads / "copy"
    copy.mkdir()
    for f in source.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    third = scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    assert (third.sketched, third.duplicates, third.reused, len(third.failed), third.total) == (2, 1, 5, 2, 10)
    _adds_up(third)
    catalog = IndexStore.open(tmp_path / "idx").read_catalog()
    assert catalog[str(copy)]["sha256"] == catalog[str(source)]["sha256"]
    assert len(_sketches(tmp_path / "idx")) == 8  # 6 + changed + new; the copy is stored once


def test_index_refuses_other_sketch_settings(tmp_path: Path) -> None:
    ads = _population(tmp_path, 2)
    scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    with pytest.raises(PopulationIndexError, match="built with"):
        scan([ads], tmp_path / "idx", config=SketchConfig(k=4, seed=11, top=2), scheduler=SYNCHRONOUS)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(PopulationIndexError, match="not an index"):
        scan([ads], tmp_path / "junk", config=CONFIG, scheduler=SYNCHRONOUS)


def test_walk_finds_peft_dirs_checkpoints_and_loose_files_not_hidden(tmp_path: Path) -> None:
    from analysis.population.walk import find_adapters, signature

    adapter = member(SPEC, 0)[0]
    write_peft(adapter, tmp_path / "run")
    write_peft(adapter, tmp_path / "run" / "checkpoint-10")
    write_peft(adapter, tmp_path / ".cache" / "x")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "style.safetensors").write_bytes((tmp_path / "run" / "adapter_model.safetensors").read_bytes())
    (tmp_path / "loose" / "readme.txt").write_text("not an adapter")
    found = find_adapters([tmp_path, tmp_path / "run"])  # overlapping roots: each location once
    assert found == [tmp_path / "loose" / "style.safetensors", tmp_path / "run", tmp_path / "run" / "checkpoint-10"]
    before = signature(tmp_path / "run")
    (tmp_path / "run" / "adapter_config.json").write_text("{}")
    assert signature(tmp_path / "run") != before and signature(tmp_path / "missing") == ""


def test_scan_cli_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from analysis.cli import main

    ads = _population(tmp_path, 3)
    argv = ["scan", str(ads), "--out", str(tmp_path / "idx"), "--scheduler", "synchronous", "--k", "8"]
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["total"], report["sketched"], len(report["failed"])) == (5, 3, 2)
    assert {f["path"] for f in report["failed"]} == {str(ads / "broken.safetensors"), str(ads / "f0000" / "notes.pt")}
    assert main(argv) == 0  # rerun: nothing new, failures listed again from the catalog
    out = capsys.readouterr().out
    assert "5 adapters" in out and "0 sketched, 3 unchanged" in out and "2 unreadable" in out
    assert out.count("unreadable: ") == 2
    assert main(["scan", str(ads), "--out", str(tmp_path / "idx"), "--scheduler", "synchronous", "--k", "4"]) == 2
    assert "built with" in capsys.readouterr().err


def test_rescan_with_nothing_new_starts_no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.population.scan as scan_module

    ads = _population(tmp_path, 2)
    scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started with nothing to sketch")

    monkeypatch.setattr(scan_module, "_client", no_cluster)
    again = scan([ads], tmp_path / "idx", config=CONFIG)  # default: a local cluster, were there work
    assert (again.reused, again.total) == (2, 4)
    _adds_up(again)


def test_local_cluster_closes_without_killing_slow_workers() -> None:
    """A worker process that takes 5 s to exit (dask kills after 4 s by default) is let go, not killed."""
    import logging

    from helpers.slow_exit import register_slow_exit

    from analysis.population.scan import map_batches

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(handler)
    try:
        out = list(map_batches(register_slow_exit, iter([[1], [2, 3]]), 5.0, workers=1))
    finally:
        nanny.removeHandler(handler)
    assert sorted(out) == [[1], [2]]
    assert not [r.getMessage() for r in records], "a worker was killed on close"


def test_scan_cli_on_a_local_cluster_prints_no_dask_chatter(tmp_path: Path) -> None:
    """The real command in its own process: a two-process local cluster, stderr free of dask's INFO lines."""
    import json
    import os
    import subprocess
    import sys

    ads = _population(tmp_path, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DASK_LOGGING__DISTRIBUTED", None)
    cmd = [sys.executable, "-m", "analysis.cli", "scan", str(ads), "--out", str(tmp_path / "idx"), "--workers", "2",
           "--k", "8", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["total"], report["sketched"], len(report["failed"])) == (4, 2, 2)
    lines = [x for x in done.stderr.replace("\r", "\n").splitlines() if x.strip() and not x.startswith("scan")]
    assert lines == [], lines  # no "INFO distributed.scheduler ...", no "killed by signal 9"
