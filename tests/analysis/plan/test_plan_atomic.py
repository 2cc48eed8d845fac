"""`plan --out X --force` is atomic: kill -9 at any point leaves the previous plan (or, mid-swap, the parked
previous that the next run puts back) and a rerun completes. The kill is real: a child `adapter-atlas plan`
process SIGKILLs itself at a chosen point (a wrapped library function), nothing is mocked in the rerun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "consolidate"))
from consolidate_tiny import make_adapters  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

# Each point wraps one function in the child and kills the process there (after `n` calls pass through).
KILLER = r"""
import os, signal, sys
point = sys.argv[1]
def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "planning":
    import analysis.plan
    analysis.plan.Planner.plan = die
elif point in ("group", "plan.json"):
    import analysis.plan.export as pe
    real = pe.write_durable if point == "plan.json" else pe.copy_adapter
    def once(*a, **k):
        if point == "plan.json":
            die()
        real(*a, **k)
        die()
    setattr(pe, "write_durable" if point == "plan.json" else "copy_adapter", once)
elif point in ("parked", "swapped"):
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if (point == "parked" and os.path.basename(dst) == "previous") or (
                point == "swapped" and ".tmp-" in os.path.basename(src) and os.path.basename(dst) == "out"):
            die()
    os.replace = replace
from analysis.cli import main
sys.exit(main(sys.argv[2:]))
"""

POINTS = ["planning", "group", "plan.json", "parked", "swapped"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    torch.set_num_threads(1)
    return [str(p) for p in make_adapters(tmp_path_factory.mktemp("atomic"), ["alpha", "beta", "gamma"])]


def _plan_tasks(out: Path) -> list[list[str]]:
    data = json.loads((out / "plan.json").read_text())
    assert all((out / g["path"]).is_dir() for g in data["groups"])  # every group the plan names is there
    return sorted(sorted(g["tasks"]) for g in data["groups"])


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_forced_plan_loses_nothing(point: str, inputs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["plan", *inputs[:2], "--weights-only", "--out", str(out)]) == 0  # the previous plan: two tasks
    before = _plan_tasks(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", KILLER, point, "plan", *inputs, "--weights-only", "--out", str(out), "--force"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    if point == "swapped":
        assert _plan_tasks(out) == [["alpha"], ["beta"], ["gamma"]]  # the new plan, complete
    elif point == "parked":  # between the two renames: the previous plan waits, parked, for the next run
        parked = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
        assert not out.exists() and len(parked) == 1 and _plan_tasks(parked[0] / "previous") == before
    else:
        assert _plan_tasks(out) == before  # the previous plan, untouched
    # a plain rerun (no --force) is refused while the previous plan is there, never half-replaced
    if point != "swapped":
        assert main(["plan", *inputs, "--weights-only", "--out", str(out)]) == 2
        assert _plan_tasks(out) == before  # the parked plan was put back by that run's check
    assert main(["plan", *inputs, "--weights-only", "--out", str(out), "--force"]) == 0
    assert _plan_tasks(out) == [["alpha"], ["beta"], ["gamma"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or parked folder left
    assert not (out / ".adapter-atlas-export").exists()


def test_plan_checks_out_before_planning(inputs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """A bad --out is refused before any planning (a file, under a file, /proc, an input, a foreign folder)."""
    file = tmp_path / "file"
    file.write_text("x")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for out, force, expect in [(file, False, "not a directory"), (file / "sub", False, "which is a file"),
                               (Path("/proc/atlas-plan"), False, "kernel filesystem"),
                               (Path(inputs[0]), True, "the input"), (foreign, True, "notes.txt")]:
        argv = ["plan", *inputs, "--out", str(out)] + (["--force"] if force else [])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expect in err and len(err.strip().splitlines()) == 1, err  # one line: no planner log before it
    assert (foreign / "notes.txt").read_text() == "keep"
