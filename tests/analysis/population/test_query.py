"""Queries over a scanned population: CLI JSON shapes, planted families found, exact re-rank = overlap's cosine."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from analysis.adapters import load_adapter
from analysis.cli import main
from analysis.overlap import aggregate, overlap_table
from analysis.population.families import families
from analysis.population.query import exact_cosine, neighbors, open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.synthetic import PlantedSpec, write_population

SPEC = PlantedSpec(families=4, layers=2, d_out=24, d_in=16, core_rank=3, arm_rank=2, noise=0.05)
N = 40


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pop")
    write_population(SPEC, root / "ads", N)
    (root / "ads" / "bad.safetensors").write_bytes(b"\x00" * 3)
    scan([root / "ads"], root / "idx", config=SketchConfig(k=16), scheduler=SYNCHRONOUS)
    return root / "ads", root / "idx"


def _family(path: str) -> str:
    return Path(path).parent.name


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_neighbors_json_shape_best_first_and_same_family(index, capsys) -> None:
    ads, idx = index
    query = sorted((ads / "f0001").iterdir())[0]
    out = _cli_json(capsys, "neighbors", str(query), "--index", str(idx), "-k", "5", "--json")
    rows = out["neighbors"]
    assert len(rows) == 5 and all(set(r) == {"adapter", "similarity"} for r in rows)
    sims = [r["similarity"] for r in rows]
    assert sims == sorted(sims, reverse=True)
    assert str(query) not in [r["adapter"] for r in rows]
    assert all(_family(r["adapter"]) == "f0001" for r in rows)  # 10 per family, all well inside


def test_exact_rerank_agrees_with_overlap_aggregate_cosine(index, capsys) -> None:
    ads, idx = index
    query = sorted((ads / "f0002").iterdir())[3]
    out = _cli_json(capsys, "neighbors", str(query), "--index", str(idx), "-k", "4", "--exact", "--json")
    rows = out["neighbors"]
    assert out["exact"] is True and len(rows) == 4
    q = load_adapter(query)
    for row in rows:
        other = load_adapter(row["adapter"])
        table = overlap_table([q, other])
        assert row["similarity"] == pytest.approx(float(aggregate(table, "cosine")[0, 1]), abs=2e-6)
        assert abs(row["similarity"] - row["sketch_similarity"]) < 0.2  # the sketch was a fair estimate
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)


def test_families_json_recovers_planted_families(index, capsys) -> None:
    from sklearn.metrics import adjusted_rand_score

    ads, idx = index
    out = _cli_json(capsys, "families", "--index", str(idx), "--json")
    labels = out["labels"]
    assert len(labels) == N and all(isinstance(v, int) for v in labels.values())
    assert out["families"] == len(out["sizes"]) == 4 and sum(out["sizes"]) == N
    assert list(out["unreadable"]) == [str(ads / "bad.safetensors")]
    paths = sorted(labels)
    assert adjusted_rand_score([_family(p) for p in paths], [labels[p] for p in paths]) == 1.0
    fixed = families(open_population(idx), n_families=2)
    assert len(fixed.sizes) == 2 and sum(fixed.sizes) == N


def test_unscanned_query_is_sketched_on_the_fly(index, tmp_path: Path) -> None:
    ads, idx = index
    pop = open_population(idx)
    src = sorted((ads / "f0003").iterdir())[1]
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in src.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    hits = neighbors(pop, copy, 3)
    assert hits[0]["adapter"] == str(src) and hits[0]["similarity"] > 0.999
    assert exact_cosine(load_adapter(copy), load_adapter(src)) == pytest.approx(1.0)


def test_bad_input_is_one_line_exit_2(index, capsys) -> None:
    ads, idx = index
    assert main(["neighbors", str(ads / "missing"), "--index", str(idx)]) == 2
    assert main(["families", "--index", str(ads)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such file" in err[0] and "not a population index" in err[1]
    assert np.isfinite(open_population(idx).vectors).all()


def test_families_text_counts_in_singular_and_plural(index, capsys) -> None:
    _, idx = index
    assert main(["families", "--index", str(idx), "--families", str(N)]) == 0  # every adapter its own family
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  family ")]
    assert len(lines) == N and all(": 1 adapter: " in x for x in lines)
    assert main(["families", "--index", str(idx), "--families", "2"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  family ")]
    assert len(lines) == 2 and all(re.search(r": \d+ adapters( \(cohesion [-0-9.]+\))?: ", x) for x in lines)


def test_exact_rerank_loads_only_what_may_be_loaded(index) -> None:
    """A server passes `may_load` (its roots): candidates it refuses are never loaded; a refused query is an error."""
    from analysis.errors import AtlasError

    ads, idx = index
    pop = open_population(idx)
    query = str(sorted((ads / "f0001").iterdir())[0].resolve())
    asked: list[str] = []

    def may_load(path: str) -> bool:
        asked.append(path)
        return path == query or Path(path).parent.name != "f0001"  # the query's own family is off limits

    rows = neighbors(pop, query, 5, exact=True, may_load=may_load)
    assert rows and all(Path(r["adapter"]).parent.name != "f0001" for r in rows)
    assert len(asked) > 5  # every candidate was asked about before loading
    with pytest.raises(AtlasError, match="outside what may be loaded"):
        neighbors(pop, query, 5, exact=True, may_load=lambda p: False)
