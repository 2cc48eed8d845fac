"""The committed sample set: families, conflicting pairs, adapters on disk, results.json quality bars."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.adapters import load_adapter
from sample_adapters.tasks import CANDIDATES, TASK_NAMES

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((SAMPLES / "results.json").read_text(encoding="utf-8"))


def test_at_least_eight_tasks_in_three_families_with_a_conflicting_pair() -> None:
    assert len(TASK_NAMES) >= 8
    assert len({CANDIDATES[t].family for t in TASK_NAMES}) >= 3
    # same inputs, different required outputs
    a, b = CANDIDATES["format_date"], CANDIDATES["format_date_us"]
    import random
    xa, ya = a.make(random.Random(7))
    xb, yb = b.make(random.Random(7))
    assert xa == xb and ya != yb


def test_results_have_the_full_matrix_and_meet_the_bars(results: dict) -> None:
    tasks = results["tasks"]
    assert sorted(tasks) == sorted(TASK_NAMES)
    assert all(results["n_eval"][t] >= 64 for t in tasks)
    assert all(results["base_accuracy"][t] <= 0.30 for t in tasks), results["base_accuracy"]
    matrix = results["matrix"]["accuracy"]
    assert sorted(matrix) == sorted(tasks)
    for adapter in tasks:
        assert sorted(matrix[adapter]) == sorted(tasks)
        assert all(0.0 <= v <= 1.0 for v in matrix[adapter].values())
        assert matrix[adapter][adapter] >= 0.80, (adapter, matrix[adapter][adapter])
        assert results["own_accuracy"][adapter] == matrix[adapter][adapter]


def test_adapters_on_disk_are_the_evaluated_ones_and_share_one_module_grid(results: dict) -> None:
    grids = set()
    for t in TASK_NAMES:
        ad = load_adapter(SAMPLES / t)
        assert ad.sha256 == results["adapters"][t]["sha256"], f"{t} changed since results.json was written"
        assert ad.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert {d.rank for d in ad.modules.values()} == {8}
        grids.add(tuple(ad.module_names()))
    assert len(grids) == 1 and len(next(iter(grids))) == 30 * 4


def test_sample_set_is_small() -> None:
    size = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert size < 40 * 2**20, f"sample_adapters/ is {size / 2**20:.1f} MB"


def test_each_adapter_was_trained_from_its_own_seed() -> None:
    """Distinct LoRA initialisations (issue 20): the seed each training.json records is the task's own, all differ;
    the shared-seed experiment beside it records one seed for all."""
    from sample_adapters.build import train_seed

    seeds = {t: json.loads((SAMPLES / t / "training.json").read_text())["seed"] for t in TASK_NAMES}
    assert seeds == {t: train_seed(t) for t in TASK_NAMES} and len(set(seeds.values())) == len(TASK_NAMES)
    shared = SAMPLES.parent / "bench" / "shared_seed"
    if shared.is_dir():
        assert {json.loads((shared / t / "training.json").read_text())["seed"] for t in TASK_NAMES} == {0}
