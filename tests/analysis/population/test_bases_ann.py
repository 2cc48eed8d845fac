"""One base per comparison (queries and families never mix bases; scan names them), and the approximate
index: IVF candidates agree with brute force, scans update it incrementally, a rebuild retrains it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from analysis.errors import AtlasError
from analysis.population import ann as ann_module
from analysis.population.ann import AnnIndex, read_manifest, sha_ids, sync_index, unit_rows
from analysis.population.families import families
from analysis.population.query import neighbors, open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.store import IndexStore
from analysis.population.synthetic import PlantedSpec, member, write_peft

SPEC = PlantedSpec(families=2, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1, noise=0.02)
WIDE = dataclasses.replace(SPEC, d_out=20)  # same module names, other shapes: another layout
CONFIG = SketchConfig(k=8, seed=3, top=2)


def _write(spec: PlantedSpec, folder: Path, n: int, base: str) -> list[Path]:
    out = []
    for i in range(n):
        adapter = member(spec, i)[0]
        adapter.base_model = base
        out.append(write_peft(adapter, folder / f"a{i}"))
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    """Three bases: 'llama' (16 x 12), 'mistral' with the same factors (identical tensors!), 'llama' 20 x 12."""
    root = tmp_path_factory.mktemp("bases")
    groups = {"llama": _write(SPEC, root / "ads" / "llama", 8, "llama"),
              "mistral": _write(SPEC, root / "ads" / "mistral", 8, "mistral"),
              "llama-wide": _write(WIDE, root / "ads" / "wide", 6, "llama")}
    scan([root / "ads"], root / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    return root / "idx", groups


def test_scan_names_every_base_with_its_count(mixed, capsys) -> None:
    idx, groups = mixed
    report = scan([idx.parent / "ads"], idx, config=CONFIG, scheduler=SYNCHRONOUS)
    found = sorted((b["base_model"], b["adapters"]) for b in report.bases)
    assert found == [("llama", 6), ("llama", 8), ("mistral", 8)]
    assert len({b["layout"] for b in report.bases}) == 2  # llama and mistral share a layout, not a base
    assert report.ann["groups"] == 3
    assert main(["scan", str(idx.parent / "ads"), "--out", str(idx), "--scheduler", "synchronous", "--k", "8",
                 "--seed", "3", "--top", "2"]) == 0
    assert capsys.readouterr().out.count("  base ") == 3


def test_neighbours_and_families_never_mix_bases(mixed) -> None:
    idx, groups = mixed
    pop = open_population(idx)
    base_of = {str(p): name for name, paths in groups.items() for p in paths}
    for name, paths in groups.items():
        hits = neighbors(pop, paths[0], 20)
        assert hits and {base_of[h["adapter"]] for h in hits} == {name}
        assert len(hits) == len(paths) - 1
    # the mistral twin of llama's a0 has identical tensors: similarity 1 by the sketch, yet never a neighbour
    twin = str(groups["mistral"][0])
    assert twin not in [h["adapter"] for h in neighbors(pop, groups["llama"][0], 20)]
    fam = families(pop)
    for label in np.unique(fam.labels):
        members = {base_of[pop.paths[i]] for i in np.flatnonzero(fam.labels == label)}
        assert len(members) == 1
    assert len(fam.per_base) == 3


def test_unscanned_query_of_an_unknown_base_is_refused_in_one_line(mixed, tmp_path) -> None:
    idx, _ = mixed
    other = dataclasses.replace(SPEC, d_in=10)
    path = _write(other, tmp_path, 1, "llama")[0]
    with pytest.raises(AtlasError, match="no adapter of its base"):
        neighbors(open_population(idx), path, 3)


def test_ivf_candidates_match_brute_force_and_sync_is_incremental(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 64))
    x = unit_rows((centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 64))).astype(np.float32))
    ids = np.arange(3000, dtype=np.int64) * 7 + 1
    monkeypatch.setattr(ann_module, "FLAT_MAX", 500)
    index = AnnIndex.build(x, ids)
    assert index.kind == "ivf" and len(index) == 3000
    assert np.array_equal(index.ids(), np.sort(ids))
    q = x[:200]
    truth = np.argsort(-(q @ x.T), axis=1)[:, 1:11]  # brute force, self excluded
    _, cand = index.search(q, 40)
    got = [set(((c[c >= 0] - 1) // 7).tolist()) for c in cand]
    recall = np.mean([len(set(t.tolist()) & g) / 10 for t, g in zip(truth, got)])
    assert recall >= 0.95
    assert index.remove(ids[:100]) == 100 and len(index) == 2900
    index.add(x[:100], ids[:100])
    assert np.array_equal(index.ids(), np.sort(ids))


def test_scan_updates_the_index_incrementally_and_compact_rebuilds(tmp_path, capsys) -> None:
    ads = tmp_path / "ads"
    paths = _write(SPEC, ads, 6, "llama")
    first = scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    assert first.ann == {"added": 6, "removed": 0, "rebuilt": 1, "updated": 0, "groups": 1}
    changed = member(SPEC, 40)[0]
    changed.base_model = "llama"
    write_peft(changed, paths[0])  # changed content, same base
    _write(dataclasses.replace(SPEC, seed=9), ads / "more", 2, "llama")
    second = scan([ads], tmp_path / "idx", config=CONFIG, scheduler=SYNCHRONOUS)
    assert second.ann == {"added": 3, "removed": 1, "rebuilt": 0, "updated": 1, "groups": 1}
    store = IndexStore.open(tmp_path / "idx")
    (entry,) = read_manifest(store).values()
    pop = open_population(tmp_path / "idx")
    (index,) = pop.ann.values()
    assert entry["count"] == len(index) == 8 and np.array_equal(index.ids(), np.sort(sha_ids(pop.sha256)))
    assert sync_index(store) == {"added": 0, "removed": 0, "rebuilt": 0, "updated": 0, "groups": 1}
    assert main(["compact", "--index", str(tmp_path / "idx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ann"]["rebuilt"] == 1
