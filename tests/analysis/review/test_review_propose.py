"""Recipes become proposals: validation of the minimal keys, verbatim text, preview snapshot."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from review_helpers import recipe_mapping, write_merge_dir

from analysis.errors import RecipeError
from analysis.review import ReviewStore, propose


@pytest.fixture()
def store(tmp_path: Path) -> ReviewStore:
    s = ReviewStore(tmp_path / "review.db")
    yield s
    s.close()


def test_directory_recipe_is_stored_verbatim_with_preview_snapshot(store: ReviewStore, tmp_path: Path) -> None:
    preview = {"method": "ties", "tasks": {"sst2": {"core_intact": 0.93, "cosine": 0.71}}, "modules": [1, 2]}
    d = write_merge_dir(tmp_path / "merge", recipe_mapping(), preview)
    text = (d / "recipe.yaml").read_text() + "# reviewer-visible comment kept verbatim\n"
    (d / "recipe.yaml").write_text(text)
    pid = propose(store, d, "Merge sst2 + imdb", "ann")
    p = store.get(pid)
    assert p.recipe_text == text and p.recipe_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert p.preview == preview
    assert [i.name for i in p.inputs] == ["alpha", "beta"] and p.inputs[1].sha256 == f"{1:064x}"
    assert p.method == "ties" and p.source_dir == str(d.resolve())
    # the snapshot does not follow later edits of the file
    (d / "preview.json").write_text(json.dumps({"tasks": {}}))
    assert store.get(pid).preview == preview


def test_recipe_file_and_mapping_routes_agree(store: ReviewStore, tmp_path: Path) -> None:
    d = write_merge_dir(tmp_path / "m", recipe_mapping())
    from_file = store.get(propose(store, d / "recipe.yaml", "t", "a"))
    from_map = store.get(propose(store, recipe_mapping(), "t", "a", preview={"tasks": {"x": {"m": float("nan")}}}))
    assert yaml.safe_load(from_file.recipe_text) == yaml.safe_load(from_map.recipe_text)
    assert from_file.inputs == from_map.inputs
    assert from_file.preview is None and from_map.preview == {"tasks": {"x": {"m": None}}}


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.pop("inputs"), "'inputs'"),
    (lambda r: r.update(atlas_recipe=2), "'atlas_recipe'"),
    (lambda r: r["inputs"][0].pop("sha256"), "'inputs.0.sha256'"),
    (lambda r: r.update(weights="heavy"), "'weights'"),
    (lambda r: r["export"].pop("format"), "'export.format'"),
])
def test_invalid_recipes_name_the_key(store: ReviewStore, tmp_path: Path, mutate, needle: str) -> None:
    recipe = recipe_mapping()
    mutate(recipe)
    d = write_merge_dir(tmp_path / "bad", recipe)
    with pytest.raises(RecipeError) as info:
        propose(store, d, "t", "a")
    message = str(info.value)
    assert "\n" not in message and needle in message and "recipe.yaml" in message
    assert store.list_proposals() == []


def test_missing_and_malformed_files(store: ReviewStore, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no merge recipe here"):
        propose(store, tmp_path / "nowhere", "t", "a")
    (tmp_path / "broken.yaml").write_text("inputs: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        propose(store, tmp_path / "broken.yaml", "t", "a")
    d = write_merge_dir(tmp_path / "m", recipe_mapping())
    (d / "preview.json").write_text("[1, 2]")
    with pytest.raises(RecipeError, match="preview must be a JSON object"):
        propose(store, d, "t", "a")
