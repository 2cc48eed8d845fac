"""Every numeric option of every command goes through one declaration (analysis/commands/options.py):
NaN, infinities, out-of-range and machine-absurd values are one line and exit 2 before any work."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from analysis.cli import build_parser, main
from analysis.commands import options as opt

SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters"


def test_no_numeric_option_skips_the_declaration() -> None:
    actions = opt.numeric_actions(build_parser())
    assert len(actions) >= 25  # the walk does reach the subcommands
    bare = [f"{cmd}: {'/'.join(a.option_strings)}" for cmd, a in actions if a.type in (int, float)]
    assert bare == [], f"declare these with analysis.commands.options: {bare}"


@pytest.mark.parametrize("argv, expect", [
    (["scan", "r", "--out", "o", "--k", "0"], "--k: 0 is out of range"),
    (["scan", "r", "--out", "o", "--k", "-3"], "--k: -3 is out of range"),
    (["scan", "r", "--out", "o", "--top", "-1"], "--top: -1 is out of range"),
    (["scan", "r", "--out", "o", "--workers", "100000"], "--workers: 100000 is out of range"),
    (["scan", "r", "--out", "o", "--batch", "0"], "--batch: 0"),
    (["neighbors", "a", "--index", "i", "-k", "0"], "-k: 0 is out of range"),
    (["neighbors", "a", "--index", "i", "-k", "-3"], "-k: -3 is out of range"),
    (["families", "--index", "i", "--threshold", "nan"], "'nan' is not a finite number"),
    (["families", "--index", "i", "--threshold", "-1"], "--threshold: -1 is out of range"),
    (["families", "--index", "i", "--sample", "0"], "--sample: 0 is out of range"),
    (["families", "--index", "i", "--sample", "-1"], "--sample: -1 is out of range"),
    (["plan", "a", "--out", "o", "--threads", "100000"], "--threads: 100000 is out of range"),
    (["plan", "a", "--out", "o", "--max-trials", "-3"], "--max-trials: -3 is out of range"),
    (["plan", "a", "--out", "o", "--min-retention", "inf"], "'inf' is not a finite number"),
    (["consolidate", "a", "--data", "d", "--strategy", "isolation", "--steps", "5", "--out", "o", "--lr", "nan"],
     "--lr: 'nan' is not a finite number"),
    (["consolidate", "a", "--data", "d", "--strategy", "isolation", "--steps", "5", "--out", "o", "--lr", "inf"],
     "--lr: 'inf' is not a finite number"),
    (["consolidate", "a", "--data", "d", "--strategy", "isolation", "--steps", "0", "--out", "o"], "--steps: 0"),
    (["evaluate", "a", "--limit", "0"], "--limit: 0 is out of range"),
    (["cluster", "a", "b", "--threshold", "nan"], "not a finite number"),
    (["merge", "a", "--method", "ties", "--target-error", "1"], "--target-error: 1 is out of range"),
    (["merge", "a", "--method", "ties", "--rank", "0"], "--rank: 0 is out of range"),
    (["merge", "a", "--method", "ties", "--rank", "two"], "invalid int value 'two'"),
    (["serve", "--port", "70000"], "--port: 70000 is out of range"),
])
def test_bad_number_is_one_line(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and expect in lines[0], lines


def test_threads_bound_follows_the_machine() -> None:
    assert opt.THREADS(str(opt.cores())) == opt.cores()
    assert opt.THREADS(str(opt.cores() * opt.THREADS_PER_CORE)) == opt.cores() * opt.THREADS_PER_CORE
    with pytest.raises(argparse.ArgumentTypeError, match="cores of this machine"):
        opt.THREADS(str(opt.cores() * opt.THREADS_PER_CORE + 1))


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "", "0x10"])
def test_number_refuses_non_finite_and_junk(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        opt.Number(float, 0.0, 1.0)(text)
    with pytest.raises(argparse.ArgumentTypeError):
        opt.count()(text)


def test_open_and_closed_ends() -> None:
    unit = opt.fraction(open_low=True)
    assert unit("1") == 1.0 and unit("1e-9") == 1e-9
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        unit("0")


def _merge(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["merge", str(SAMPLES / "format_date"), str(SAMPLES / "math_add"), *argv])
    return code, capsys.readouterr().err


def test_merge_param_nan_is_one_line_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was `ValueError: cannot convert float NaN to integer` (isolation's p): the registry refuses it."""
    for value in ("nan", "inf", "-inf"):
        code, err = _merge(["--method", "isolation", "--param", f"p={value}", "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and "parameter 'p'" in err and "not a finite number" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_param_registry_refuses_nan_for_every_float_param() -> None:
    from analysis.errors import RecipeError
    from analysis.merge.registry import METHODS

    floats = [(m, p) for m in METHODS.values() for p in m.params if p.type is float]
    assert floats
    for method, param in floats:
        for bad in (float("nan"), "nan", float("inf")):
            with pytest.raises(RecipeError, match="finite"):
                method.resolve_params({param.name: bad})


def test_merge_huge_rank_is_refused_before_merging_regression(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--rank 1000000000` grew past 6.9 GB: refused before any merge, naming the widest module's width."""
    t0 = time.perf_counter()
    code, err = _merge(["--method", "ties", "--rank", "1000000000", "--out", str(tmp_path / "o")], capsys)
    elapsed = time.perf_counter() - t0
    assert code == 2 and "wider than every module" in err and "width 576" in err, err
    assert not (tmp_path / "o").exists()
    assert elapsed < 60  # a guard against the regression (it ran for minutes), not a speed measurement


def test_consolidate_rank_wider_than_every_module_is_refused_before_training(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["consolidate", str(SAMPLES / "math_add"), str(SAMPLES / "math_max"), "--data", str(SAMPLES / "tasks"),
                 "--strategy", "isolation", "--steps", "2", "--rank", "4000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--rank 4000 is wider than every module" in err and "width 576" in err, err
    assert not (tmp_path / "o").exists()


def test_library_thread_caps_follow_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """ADAPTER_ATLAS_THREADS=100000 (or bounded_threads(100000)) would crash torch's pool like --threads did."""
    import torch

    from analysis.threads import THREADS_PER_CORE, bounded_threads, default_threads, max_threads

    assert THREADS_PER_CORE == opt.THREADS_PER_CORE  # the CLI and the library share one bound
    monkeypatch.setenv("ADAPTER_ATLAS_THREADS", "100000")
    assert default_threads() == max_threads()
    monkeypatch.setenv("ADAPTER_ATLAS_THREADS", "1")
    assert default_threads() == 1
    before = torch.get_num_threads()
    with bounded_threads(100000) as cap:
        assert cap <= max_threads() and torch.get_num_threads() <= max_threads()
    assert torch.get_num_threads() == before


def test_public_api_is_lazy_and_complete() -> None:
    """`import analysis` (run first by every `analysis.*` import, so by every CLI command) loads no torch: a
    refusal of a bad option or URL is not kept waiting for it; every public name still resolves."""
    import subprocess
    import sys

    code = ("import sys, analysis; assert 'torch' not in sys.modules, 'torch'; "
            "names = [n for n in analysis.__all__ if getattr(analysis, n, None) is None]; "
            "assert not names, names; assert set(analysis.__all__) <= set(dir(analysis)); print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
