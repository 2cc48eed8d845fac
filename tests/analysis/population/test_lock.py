"""One writer per index: a second scan (or compact) is refused at once in one line naming the index and the
holder's pid; readers read the published index while a writer is stopped in the middle of its write."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.population.lock import IndexBusyError, writer_lock
from analysis.population.query import open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.store import LOCK_NAME, IndexStore, PopulationIndexError
from analysis.population.synthetic import PlantedSpec, write_population

SPEC = PlantedSpec(families=3, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1)
CONFIG = SketchConfig(k=8, seed=11, top=2)
CLI_CONFIG = ["--k", "8", "--seed", "11", "--top", "2"]
REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", *argv], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


HOLD = "import sys\nfrom analysis.population.lock import writer_lock\nwith writer_lock(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    sys.stdin.read()\n"


def test_a_held_lock_refuses_scan_and_compact_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    catalog = (idx / "catalog.parquet").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(idx)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert (idx / LOCK_NAME).read_text().split() == [str(holder.pid), "scan"]
        with pytest.raises(IndexBusyError, match=f"pid {holder.pid}"):
            scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
        for argv in (["scan", str(ads), "--out", str(idx), "--scheduler", SYNCHRONOUS, *CLI_CONFIG],
                     ["compact", "--index", str(idx)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(idx) in err[0] and f"(pid {holder.pid})" in err[0], err
        assert main(["families", "--index", str(idx), "--json"]) == 0  # readers take no lock
        capsys.readouterr()
    finally:
        holder.communicate("", timeout=60)
    assert (idx / "catalog.parquet").read_bytes() == catalog  # the refused writers wrote nothing
    assert (idx / LOCK_NAME).read_text() == ""  # released, without a stale pid
    report = scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)  # free again
    assert report.reused == 6


def test_the_lock_is_reentrant_in_its_thread_and_refuses_other_threads(tmp_path: Path) -> None:
    import threading

    idx = tmp_path / "idx"
    refused: list[str] = []

    def other() -> None:
        try:
            with writer_lock(idx, "compact"):
                refused.append("entered")
        except IndexBusyError as exc:
            refused.append(str(exc))

    with writer_lock(idx), writer_lock(idx):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(refused) == 1 and f"(pid {os.getpid()})" in refused[0]
    with writer_lock(idx, "compact"):  # released by the outer block
        pass


def test_the_lock_never_litters_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not an index")
    with pytest.raises(PopulationIndexError, match="not an index directory"):
        scan([tmp_path], tmp_path, config=CONFIG, scheduler=SYNCHRONOUS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_two_scans_at_once_one_writes_the_other_is_refused_readers_read(tmp_path: Path) -> None:
    """Scan A (a CLI process) is stopped with SIGSTOP while it holds the lock, somewhere inside its write;
    scan B is refused within seconds naming A's pid; neighbors and families read the previous index whole;
    A then finishes and the index is the one a clean scan writes."""
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    before = open_population(idx).paths
    write_population(SPEC, tmp_path / "more", 40)  # A has 40 new adapters to sketch: a window to stop it in
    os.rename(tmp_path / "more", ads / "more")
    a = subprocess.Popen([sys.executable, "-m", "analysis.cli", "scan", str(ads), "--out", str(idx), "--scheduler",
                          SYNCHRONOUS, "--json", *CLI_CONFIG], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while (idx / LOCK_NAME).read_text().split()[:1] != [str(a.pid)]:
            assert a.poll() is None and time.monotonic() < deadline, "scan A never took the lock"
            time.sleep(0.005)
        a.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        b = _cli("scan", str(ads), "--out", str(idx), "--scheduler", SYNCHRONOUS, *CLI_CONFIG)
        b_seconds = time.monotonic() - t0
        err = b.stderr.strip().splitlines()
        assert b.returncode == 2 and len(err) == 1, b.stderr
        assert str(idx) in err[0] and f"another scan (pid {a.pid})" in err[0] and "Traceback" not in err[0]
        assert b_seconds < 60  # the CLI's own start; the refusal itself does not wait
        query = str(sorted((ads / "f0001").iterdir())[0])
        for argv in (["neighbors", query, "--index", str(idx), "--json"], ["families", "--index", str(idx), "--json"]):
            r = _cli(*argv)
            assert r.returncode == 0, r.stderr
            json.loads(r.stdout)
        seen = open_population(idx).paths  # the previous index, or A's final one if it published before the stop
        assert seen == before or len(seen) == 46
    finally:
        a.send_signal(signal.SIGCONT)
        out, err_a = a.communicate(timeout=300)
    assert a.returncode == 0, err_a
    assert json.loads(out)["total"] == 46
    fresh = tmp_path / "fresh"
    scan([ads], fresh, config=CONFIG, scheduler=SYNCHRONOUS)
    assert open_population(idx).paths == open_population(fresh).paths
    assert IndexStore.open(idx).read_catalog().keys() == IndexStore.open(fresh).read_catalog().keys()


def test_a_reader_overtaken_by_compact_or_a_new_faiss_file_reads_again(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The races the writer's publication order leaves: `compact` removes the parts a reader has just listed,
    a scan replaces the faiss file the reader's manifest names. Each is read again, never reported as damage."""
    from analysis.population import ann as ann_module
    from analysis.population import store as store_module

    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS, part_rows=2)
    expected = open_population(idx)
    read_part, load = store_module.IndexStore.read_part, ann_module.AnnIndex.load
    writes: list[str] = []

    def read_part_overtaken(self, part, columns=None):
        if not writes:  # the reader listed the parts; a compaction now replaces them all
            writes.append("compact")
            assert main(["compact", "--index", str(idx)]) == 0
        return read_part(self, part, columns)

    def load_overtaken(folder, entry, d):
        if len(writes) == 1:  # the reader read the manifest; a rebuild now publishes a new file, removes this one
            writes.append("rebuild")
            ann_module.sync_index(IndexStore.open(idx), rebuild=True)
        return load(folder, entry, d)

    monkeypatch.setattr(store_module.IndexStore, "read_part", read_part_overtaken)
    monkeypatch.setattr(ann_module.AnnIndex, "load", staticmethod(load_overtaken))
    pop = open_population(idx)
    assert writes == ["compact", "rebuild"]
    assert pop.paths == expected.paths and pop.vectors.tobytes() == expected.vectors.tobytes()
    assert [len(i) for i in pop.ann.values()] == [len(i) for i in expected.ann.values()]


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    ads, idx = tmp_path / "ads", tmp_path / "idx"
    write_population(SPEC, ads, 6)
    scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    (idx / LOCK_NAME).unlink()
    (idx / LOCK_NAME).symlink_to(precious)
    with pytest.raises(PopulationIndexError, match="writers' lock"):
        scan([ads], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    assert precious.read_text() == "the user's own file"
