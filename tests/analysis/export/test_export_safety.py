"""Exports never delete an input, refuse a bad --out before any work, are durable, and recover from kill -9.

Inputs are copies of two committed sample adapters (tmp_path), merged with `linear`, so every test
runs in a fresh clone without ../shared.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.errors import RecipeError
from analysis.export import build_recipe, export_merge
from analysis.export.outdir import MARKER, check_out_dir, clean_stale

REPO = Path(__file__).resolve().parents[3]
SAMPLES = ("math_add", "math_max")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    return [Path(shutil.copytree(REPO / "sample_adapters" / n, tmp_path / "in" / n)) for n in SAMPLES]


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (modules, recipe, adapters)
    from analysis.adapters import load_adapter
    from analysis.merge import merge_adapters

    root = tmp_path_factory.mktemp("merged_inputs")
    adapters = [load_adapter(shutil.copytree(REPO / "sample_adapters" / n, root / n)) for n in SAMPLES]
    result = merge_adapters(adapters, "linear")
    return result.modules, build_recipe(adapters, "linear"), adapters


# --- --out checked before any work ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["is-input", "holds-inputs", "inside-input"])
def test_force_never_deletes_an_input(inputs: list[Path], where: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = {"is-input": inputs[0], "holds-inputs": inputs[0].parent,
           "inside-input": inputs[0] / "sub"}[where]
    before = [_digest(p) for p in inputs]
    with pytest.raises(RecipeError, match="refused, it would be overwritten"):
        check_out_dir(out, inputs=inputs, force=True)
    code = main(["merge", *map(str, inputs), "--method", "linear", "--out", str(out), "--force"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "input" in err, err
    assert [_digest(p) for p in inputs] == before and not (inputs[0] / "sub").exists()


def test_force_never_deletes_an_input_reached_through_a_link(inputs: list[Path], tmp_path: Path) -> None:
    link = tmp_path / "alias"
    link.symlink_to(inputs[1], target_is_directory=True)
    with pytest.raises(RecipeError, match="is the input"):
        check_out_dir(link, inputs=inputs, force=True)


def _read_only_dir() -> Path | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mnt, _fs, opts, *_ = line.split()
        if "ro" in opts.split(",") and Path(mnt).is_dir() and not mnt.startswith(("/proc", "/sys", "/dev")):
            return Path(mnt)
    return None


def test_bad_out_paths_refused_in_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {a_file: "not a directory", fifo: "not a directory", a_file / "out": "which is a file",
             a_file / "deep" / "out": "which is a file", Path("/proc/atlas-out"): "kernel filesystem",
             Path("/sys/atlas-out"): "kernel filesystem"}
    ro = _read_only_dir()
    if ro is not None:
        cases[ro / "atlas-out"] = "cannot write"
    if os.geteuid() != 0:  # permission bits only stop non-root users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases[locked / "out"] = "cannot write"
    for out, needle in cases.items():
        with pytest.raises(RecipeError, match=needle) as info:
            check_out_dir(out, inputs=[], force=True)
        assert "\n" not in str(info.value)
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RecipeError, match="already exists; pass --force"):
        check_out_dir(existing, inputs=[], force=False)
    assert check_out_dir(existing, inputs=[], force=True) == existing.resolve()
    assert check_out_dir(tmp_path / "new" / "deeper", inputs=[]) == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert [p.name for p in tmp_path.iterdir() if ".probe-" in p.name] == []


def test_merge_cli_checks_out_before_loading_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The inputs do not even exist: a refusal about --out proves --out was checked first."""
    missing = [str(tmp_path / "nope-a"), str(tmp_path / "nope-b")]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, needle in (("/proc/atlas-out", "kernel filesystem"), (str(a_file / "out"), "which is a file")):
        assert main(["merge", *missing, "--method", "linear", "--out", out]) == 2
        assert needle in capsys.readouterr().err


# --- durable and atomic -------------------------------------------------------------------------------

def test_files_and_folders_are_fsynced_before_and_after_the_rename(merged, tmp_path: Path,  # noqa: ANN001
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    modules, recipe, adapters = merged
    synced: list[tuple[int, bool]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    out = export_merge(modules, recipe, tmp_path / "out", inputs=adapters)
    inodes = {p.stat().st_ino for p in out.iterdir()}
    assert not (out / MARKER).exists()
    assert inodes and inodes <= {ino for ino, is_dir in synced if not is_dir}  # every file
    assert (out.stat().st_ino, True) in synced  # the export folder (synced under its temp name)
    assert (tmp_path.stat().st_ino, True) in synced  # the parent, after the rename


KILLED_EXPORT = """
import os, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from analysis.adapters import load_adapter
from analysis.export import build_recipe, export_merge
from analysis.export import writer
from analysis.merge import merge_adapters
adapters = [load_adapter(Path(p)) for p in {inputs!r}]
result = merge_adapters(adapters, "linear")
stage = {stage!r}
if stage == "writing":
    def stall(*a, **k):
        print("inside", flush=True); time.sleep(600)
    writer._verify = stall
else:
    real = os.replace
    def parked(src, dst):
        real(src, dst)
        if Path(dst).name == "previous":
            print("inside", flush=True); time.sleep(600)
    writer.os.replace = parked
export_merge(result.modules, build_recipe(adapters, "linear"), Path({out!r}), inputs=adapters, force=True)
"""


def _kill_mid_export(inputs: list[Path], out: Path, stage: str) -> None:
    code = KILLED_EXPORT.format(repo=str(REPO), inputs=[str(p) for p in inputs], out=str(out), stage=stage)
    victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = victim.stdout.readline()
    assert line.strip() == "inside", victim.stderr.read()[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)


def test_kill_9_while_writing_leaves_no_partial_out_and_next_export_cleans(merged, inputs: list[Path],  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    modules, recipe, adapters = merged
    parent = tmp_path / "exports"
    parent.mkdir()
    out = parent / "merged"
    _kill_mid_export(inputs, out, "writing")
    leftovers = [p for p in parent.iterdir() if p.name.startswith(".merged.tmp-")]
    assert not out.exists() and len(leftovers) == 1 and (leftovers[0] / MARKER).is_file()
    assert (leftovers[0] / "adapter_model.safetensors").stat().st_size > 0  # it was mid-way
    export_merge(modules, recipe, parent / "other", inputs=adapters)  # the next export to the same parent
    assert sorted(p.name for p in parent.iterdir()) == ["other"]


def test_kill_9_between_the_renames_of_force_restores_the_previous_export(merged, inputs: list[Path],  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    modules, recipe, adapters = merged
    parent = tmp_path / "exports"
    out = export_merge(modules, recipe, parent / "merged", inputs=adapters)
    (out / "preview.json").write_text('{"previous": true}')  # marks this export (a file our exports write)
    before = _digest(out)
    _kill_mid_export(inputs, out, "swapping")
    assert not out.exists()  # the one moment a replacement has no target: the old one is parked
    assert sorted(p.name.split("-")[0] for p in parent.iterdir()) == [".merged.old", ".merged.tmp"]
    clean_stale(parent)
    assert _digest(out) == before and sorted(p.name for p in parent.iterdir()) == ["merged"]
    export_merge(modules, recipe, out, inputs=adapters, force=True)  # and a later --force replaces it cleanly
    assert not (out / "preview.json").exists() and sorted(p.name for p in parent.iterdir()) == ["merged"]


def test_clean_stale_touches_only_ours_whose_writer_is_gone(tmp_path: Path) -> None:
    def leftover(name: str, marker: dict | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"partial")
        if marker is not None:
            (d / MARKER).write_text(json.dumps(marker))
        return d

    host, now = socket.gethostname(), time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = leftover(".a.tmp-abc123", {"host": host, "pid": dead.pid, "started": now})
    old_elsewhere = leftover(".b.tmp-abc123", {"host": "elsewhere", "pid": 1, "started": now - 3 * 86400})
    alive = leftover(".c.tmp-abc123", {"host": host, "pid": os.getpid(), "started": now})
    fresh_elsewhere = leftover(".d.tmp-abc123", {"host": "elsewhere", "pid": 1, "started": now})
    unmarked = leftover(".e.tmp-abc123", None)
    not_ours = leftover("e.tmp-abc123", {"host": host, "pid": dead.pid, "started": now})
    assert sorted(clean_stale(tmp_path)) == sorted([gone, old_elsewhere])
    assert all(p.exists() for p in (alive, fresh_elsewhere, unmarked, not_ours))


@pytest.mark.timeout(60)
def test_recipe_that_is_a_fifo_or_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "recipe.yaml")  # reading it would block forever
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"method: linear\n# caf\xe9\n")
    for recipe, needle in ((fifo, "FIFO"), (fifo / "recipe.yaml", "FIFO"), (latin, "not UTF-8 text (byte 0xe9"),
                           (tmp_path / "missing.yaml", "not found")):
        assert main(["merge", "--recipe", str(recipe), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
