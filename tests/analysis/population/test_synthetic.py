"""Planted populations: the streamed sketches equal the sketch of the adapter; weak families have the cosine
they are planted with; uneven family sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.population.sketch import SketchConfig, sketch_adapter
from analysis.population.synthetic import PlantedSpec, family_of, member, planted_sizes, stream_sketches

CONFIG = SketchConfig(k=8, seed=5)


@pytest.mark.parametrize("spec", [PlantedSpec(families=3, layers=1, d_out=20, d_in=12, core_rank=2, arm_rank=2),
                                  PlantedSpec(families=3, layers=2, d_out=16, d_in=16, core_rank=2, arm_rank=2,
                                              share=(0.1, 0.3), sizes=(2, 5, 3))])
def test_streamed_sketches_equal_the_adapters_sketch(spec: PlantedSpec) -> None:
    idx = np.arange(7)
    streamed = stream_sketches(spec, CONFIG, idx)
    direct = np.stack([sketch_adapter(member(spec, int(i))[0], CONFIG).vector for i in idx])
    assert np.allclose(streamed, direct, rtol=1e-5, atol=1e-6 * np.abs(direct).max())


def test_weak_families_have_the_planted_cosine_and_uneven_sizes() -> None:
    sizes = (4, 9, 6)
    spec = PlantedSpec(families=3, layers=2, d_out=48, d_in=48, core_rank=2, arm_rank=2, share=(0.1, 0.3),
                       sizes=sizes)
    assert spec.count == 19 and list(family_of(spec, np.arange(19))) == [0] * 4 + [1] * 9 + [2] * 6
    dense = []
    for i in range(19):
        a = member(spec, i)[0]
        dense.append(np.concatenate([a.modules[m].dense(torch.float64).numpy().ravel() for m in spec.module_names]))
    x = np.stack(dense)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, rtol=0.03)  # unit parts; their cross term is small
    cos = x @ x.T
    fam = family_of(spec, np.arange(19))
    same = (fam[:, None] == fam[None, :]) & ~np.eye(19, dtype=bool)
    assert 0.05 < np.median(cos[same]) < 0.35 and np.abs(np.median(cos[~same & ~np.eye(19, dtype=bool)])) < 0.05
    drawn = planted_sizes(1000, 5, 500)
    assert min(drawn) >= 5 and max(drawn) <= 500 and np.median(drawn) < 100  # many small, a few large
