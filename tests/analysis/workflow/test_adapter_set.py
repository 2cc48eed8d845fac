"""AdapterSet: unique display names, the one content hash, model order, shared modules, the starting pick."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from workflow_factories import copy_adapter, peft_adapter

from analysis.adapters import load_adapter
from analysis.errors import AdapterFormatError, IncompatibleAdaptersError
from analysis.workflow import AdapterSet, display_names, most_overlapping, run_merge


@pytest.fixture(scope="module")
def twins(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("twins")
    a = peft_adapter(tmp / "src", "adapter", seed=1)
    b = peft_adapter(tmp / "src2", "adapter", seed=2)
    return [copy_adapter(a.path, tmp / "run1" / "adapter"), copy_adapter(b.path, tmp / "run2" / "adapter")]


def test_equal_directory_names_stay_two_inputs(twins) -> None:  # noqa: ANN001
    s = AdapterSet.from_paths(twins)
    assert s.names == ["run1/adapter", "run2/adapter"]
    assert s.sha256s == [load_adapter(p).sha256 for p in twins]  # the hash recipes record
    assert s.sha256s[0] != s.sha256s[1]
    run = run_merge(s, "linear")
    assert [t["name"] for t in run.evidence["tasks"]] == ["run1/adapter", "run2/adapter"]
    assert [t["index"] for t in run.evidence["tasks"]] == [0, 1]
    assert [i.name for i in run.recipe.inputs] == ["run1/adapter", "run2/adapter"]
    assert run.evidence["tasks"][0]["cosine"] != run.evidence["tasks"][1]["cosine"]


def test_display_names_shortest_suffix_and_repeats(tmp_path: Path) -> None:
    for d in ("x/run1/adapter", "y/run1/adapter", "z/other"):
        (tmp_path / d).mkdir(parents=True)
    weights = tmp_path / "z" / "other" / "adapter_model.safetensors"
    weights.write_bytes(b"")
    names = display_names([tmp_path / "x/run1/adapter", tmp_path / "y/run1/adapter", weights, tmp_path / "z/other"])
    assert names == ["x/run1/adapter", "y/run1/adapter", "other", "other#2"]


def test_from_adapters_renames_by_copy(twins) -> None:  # noqa: ANN001
    loaded = [load_adapter(p) for p in twins]  # both named "adapter" by the loader
    s = AdapterSet.from_adapters(loaded)
    assert s.names == ["run1/adapter", "run2/adapter"] and [a.name for a in loaded] == ["adapter", "adapter"]
    assert s[0].modules is loaded[0].modules and s[0].sha256 == loaded[0].sha256


def test_index_shared_and_model_order(tmp_path: Path) -> None:
    a = peft_adapter(tmp_path, "qv", seed=1, targets=["q_proj", "v_proj"])
    b = peft_adapter(tmp_path, "v", seed=2, targets=["v_proj"])
    s = AdapterSet.from_paths([a.path, b.path])
    assert s.shared == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    assert s.modules[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert s.layers == [0, 1] and s.module_types == ["self_attn.q_proj", "self_attn.v_proj"]
    assert s.index["model.layers.1.self_attn.q_proj"] == (1, "self_attn.q_proj")
    assert AdapterSet.model_order(["model.layers.10.mlp", "model.layers.2.mlp"]) == ["model.layers.2.mlp",
                                                                                       "model.layers.10.mlp"]


def test_no_shared_module_is_refused(tmp_path: Path) -> None:
    a = peft_adapter(tmp_path, "q", seed=1, targets=["q_proj"])
    b = peft_adapter(tmp_path, "v", seed=2, targets=["v_proj"])
    with pytest.raises(IncompatibleAdaptersError, match="share no module"):
        run_merge(AdapterSet.from_paths([a.path, b.path]), "linear")
    with pytest.raises(AdapterFormatError, match="no such file"):
        AdapterSet.from_paths([tmp_path / "missing"])


def test_most_overlapping_starts_with_the_colliding_ones() -> None:
    sim = np.array([[1, .1, .2, .0], [.1, 1, .9, .3], [.2, .9, 1, .5], [.0, .3, .5, 1]])
    assert most_overlapping(sim, 2) == [1, 2]
    assert most_overlapping(sim, 3) == [1, 2, 3]
    assert most_overlapping(np.eye(2), 3) == [0, 1]
