"""`review export --out`: an input of the proposal is never overwritten, an existing file needs --force,
and a killed export leaves the old report or none, never half a report."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from review_helpers import recipe_mapping

from analysis.cli import main
from analysis.errors import AtlasError
from analysis.review import ReviewStore, propose
from analysis.review.reports import atomic_write_text, write_report

REPO = Path(__file__).resolve().parents[3]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def proposal_with_inputs(tmp_path: Path) -> tuple[str, int, Path, Path]:
    """(db, proposal id, input folder, input single file): real adapter bytes the export must not touch."""
    folder = Path(shutil.copytree(REPO / "sample_adapters" / "math_add", tmp_path / "run1" / "adapter"))
    single = tmp_path / "lora.safetensors"
    shutil.copyfile(folder / "adapter_model.safetensors", single)
    db = str(tmp_path / "rev.db")
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(names=("math_add", "single"), paths=(str(folder), str(single))), "t", "a")
    return db, pid, folder, single


def test_inputs_are_refused_even_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            proposal_with_inputs: tuple[str, int, Path, Path]) -> None:
    db, pid, folder, single = proposal_with_inputs
    weights = folder / "adapter_model.safetensors"
    (tmp_path / "hard").mkdir()
    os.link(single, tmp_path / "hard" / "same.safetensors")
    (tmp_path / "alias").symlink_to(folder)
    before = {p: p.read_bytes() for p in (*folder.iterdir(), single)}
    targets = (weights, folder / "adapter_config.json", folder / "new_report.html", single,
               tmp_path / "hard" / "same.safetensors", tmp_path / "alias" / "adapter_model.safetensors",
               tmp_path / "run1" / "adapter" / ".." / "adapter" / "report.md")
    for out in targets:
        for force in ((), ("--force",)):
            code, err = _cli(capsys, "review", "export", str(pid), "--format", "html", "--out", str(out),
                             "--db", db, *force)
            assert code == 2 and "\n" not in err and "input" in err and "refused" in err, (out, err)
    assert {p: p.read_bytes() for p in (*folder.iterdir(), single)} == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in before if p.parent == folder)


def test_existing_report_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     proposal_with_inputs: tuple[str, int, Path, Path]) -> None:
    db, pid, _, _ = proposal_with_inputs
    out = tmp_path / "reports" / "r.md"
    assert _cli(capsys, "review", "export", str(pid), "--format", "md", "--out", str(out), "--db", db)[0] == 0
    assert out.read_text().startswith("## Merge proposal #")
    out.write_text("my edited report")
    code, err = _cli(capsys, "review", "export", str(pid), "--format", "md", "--out", str(out), "--db", db)
    assert code == 2 and "already exists; pass --force" in err and "\n" not in err
    assert out.read_text() == "my edited report"
    assert _cli(capsys, "review", "export", str(pid), "--format", "md", "--out", str(out), "--db", db,
                "--force")[0] == 0
    assert out.read_text().startswith("## Merge proposal #")
    assert [p.name for p in out.parent.iterdir()] == ["r.md"]  # no temp file left behind


def test_library_write_refuses_a_file_that_appeared_after_the_check(
        tmp_path: Path, proposal_with_inputs: tuple[str, int, Path, Path]) -> None:
    db, pid, folder, _ = proposal_with_inputs
    with ReviewStore(db) as store:
        p = store.get(pid)
    with pytest.raises(AtlasError, match="input"):
        write_report(p, "md", folder / "adapter_model.safetensors", force=True)
    late = tmp_path / "late.md"
    late.write_text("appeared")
    with pytest.raises(AtlasError, match="already exists"):
        atomic_write_text(late, "new", replace=False)  # the no-clobber write itself, past any check
    assert late.read_text() == "appeared" and sorted(p.name for p in tmp_path.glob(".late*")) == []


_WRITER = """
import sys
from analysis.review.reports import atomic_write_text
atomic_write_text(sys.argv[1], "N" * (64 * 2**20))
"""


@pytest.mark.timeout(120)
def test_killed_export_leaves_the_old_report_or_the_whole_new_one(tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    out.write_text("old report")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while proc.poll() is None and not any(p.stat().st_size for p in tmp_path.glob(".r.md.*.tmp")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    text = out.read_bytes()
    assert text == b"old report" or (len(text) == 64 * 2**20 and set(text) == {ord("N")}), len(text)
