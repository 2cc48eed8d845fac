"""Families where the sketch error is the size of the signal: the result says so and names a k; a rescan at
that k, or the exact re-rank, finds the planted families. Tiny planted sets: unrelated adapters stay alone."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from analysis.cli import main
from analysis.population.ann import unit_rows
from analysis.population.chance import density_mode, null_level
from analysis.population.families import families
from analysis.population.query import Population, open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.synthetic import PlantedSpec, family_of, stream_sketches, write_population

WEAK = PlantedSpec(families=8, layers=2, d_out=16, d_in=16, core_rank=2, arm_rank=2, share=(0.15, 0.3),
                   sizes=(20,) * 8, seed=5)


@pytest.fixture(scope="module")
def weak(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weak")
    write_population(WEAK, root / "ads", WEAK.count)
    scan([root / "ads"], root / "k8", config=SketchConfig(k=8), scheduler=SYNCHRONOUS)
    return root


def _ari(pop: Population, labels: np.ndarray) -> float:
    return adjusted_rand_score([Path(p).parent.name for p in pop.paths], labels)


def test_sketch_too_coarse_is_said_with_a_k_that_resolves_and_exact_resolves(weak, capsys) -> None:
    pop = open_population(weak / "k8")
    blind = families(pop)
    assert _ari(pop, blind.labels) < 0.3  # at k = 8 the sketch error (~0.16) hides cosines of 0.15-0.3
    (facts,) = blind.per_base
    assert blind.warnings and "rescan with --k" in blind.warnings[0] and facts["suggested_k"] > 8
    exact = families(pop, exact=True)
    assert _ari(pop, exact.labels) >= 0.95 and not exact.warnings
    scan([weak / "ads"], weak / "again", config=SketchConfig(k=facts["suggested_k"]), scheduler=SYNCHRONOUS)
    resolved = families(open_population(weak / "again"))
    assert _ari(open_population(weak / "again"), resolved.labels) >= 0.85
    assert main(["families", "--index", str(weak / "k8")]) == 0
    assert "rescan with --k" in capsys.readouterr().err


def test_exact_neighbours_widen_their_pool_where_the_sketch_is_noisy(weak) -> None:
    from analysis.population.query import neighbors

    pop = open_population(weak / "k8")
    hits = [(q, neighbors(pop, q, 10, exact=True)) for q in pop.paths[::23]]
    precision = np.mean([np.mean([Path(h["adapter"]).parent == Path(q).parent for h in hs]) for q, hs in hits])
    assert precision >= 0.9  # 19 family mates each, exact cosine 0.15-0.3 against ~0.05 for the others


def test_unrelated_adapters_stay_alone_and_small_families_are_found() -> None:
    sizes = (1,) * 300 + (5,) * 6 + (60,) * 2
    spec = PlantedSpec(layers=1, d_out=32, d_in=24, core_rank=3, arm_rank=2, sizes=sizes, seed=7)
    n = spec.count
    config = SketchConfig(k=16)
    vectors = unit_rows(stream_sketches(spec, config, np.arange(n)))
    pop = Population(root=Path("."), config=config, paths=[f"a{i}" for i in range(n)],
                     sha256=[hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)], vectors=vectors,
                     norms=np.ones(n))
    fam = families(pop)
    truth = family_of(spec, np.arange(n))
    assert adjusted_rand_score(truth, fam.labels) >= 0.95
    assert sorted(fam.sizes, reverse=True)[:8] == [60, 60, 5, 5, 5, 5, 5, 5]
    assert sum(1 for s in fam.sizes if s == 1) >= 295  # at most a few chance pairs among the 300 loners
    assert all(c is None or c > 0.3 for c, s in zip(fam.cohesion, fam.sizes) if s >= 5)


def test_chance_level_ignores_an_upper_shoulder_of_related_pairs() -> None:
    rng = np.random.default_rng(0)
    null = rng.normal(0.02, 0.05, 7000)
    related = rng.uniform(0.5, 0.9, 3000)  # 30% related pairs
    centre, spread = null_level(np.concatenate([null, related]))
    assert abs(centre - 0.02) < 0.01 and abs(spread - 0.05) < 0.01
    assert abs(density_mode(rng.normal(1.0, 0.1, 5000)) - 1.0) < 0.02


def test_families_k_refused_across_bases(tmp_path, capsys) -> None:
    import dataclasses

    from analysis.population.synthetic import member, write_peft

    spec = PlantedSpec(families=2, layers=1, d_out=8, d_in=8, core_rank=1, arm_rank=1)
    for base, width in (("a", 8), ("b", 10)):
        for i in range(3):
            adapter = member(dataclasses.replace(spec, d_out=width), i)[0]
            adapter.base_model = base
            write_peft(adapter, tmp_path / "ads" / base / str(i))
    scan([tmp_path / "ads"], tmp_path / "idx", config=SketchConfig(k=4), scheduler=SYNCHRONOUS)
    assert main(["families", "--index", str(tmp_path / "idx"), "--families", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never mix bases" in err[0]
