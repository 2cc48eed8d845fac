"""Turning a merge recipe into a review proposal.

The recipe is treated as data: its full text is stored verbatim (what reviewers approve is exactly
what will be replayed), only the minimal keys are validated, and the merge preview beside it is
snapshotted so the discussion refers to the numbers the author saw, even if the files change later.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from analysis.errors import AtlasError, RecipeError
from analysis.recipe_contract import RecipeContract, validate_recipe
from analysis.review.store import ReviewStore

if TYPE_CHECKING:
    from analysis.workflow.evidence import Evidence

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
PREVIEW_FILE = "preview.json"


def recipe_file(path: str | os.PathLike[str]) -> Path:
    """`recipe.yaml` itself, or the merge output directory that holds it."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / RECIPE_FILE
    if not p.exists():
        raise RecipeError(f"{p}: no merge recipe here (expected {RECIPE_FILE} or a directory holding it)")
    return p


def read_recipe(path: str | os.PathLike[str]) -> tuple[RecipeContract, str, Path]:
    """(validated recipe, its exact text, the file) from a recipe file or merge directory."""
    file = recipe_file(path)
    try:
        text = _read_text(file, "merge recipe")
        data = yaml.safe_load(text)
    except (AtlasError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{file}: cannot read the recipe ({exc})" if isinstance(exc, UnicodeDecodeError)
                          else str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{file}: not valid YAML{where}") from None
    return validate_recipe(data, str(file)), text, file


def read_preview(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The preview JSON beside a recipe (None when absent); must be a JSON object."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        data = json.loads(_read_text(p, "merge preview"), parse_constant=_nan_to_none)
    except AtlasError as exc:
        raise RecipeError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RecipeError(f"{p}: merge preview is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: merge preview must be a JSON object, got {type(data).__name__}")
    return data


def _read_text(path: Path, what: str) -> str:
    """A regular file's text (a FIFO would block forever; a huge file would fill memory), strict UTF-8."""
    from analysis.adapters.limits import MAX_CONFIG_BYTES, read_regular_file

    return bytes(read_regular_file(path, what, limit=MAX_CONFIG_BYTES)).decode("utf-8")


def _nan_to_none(_constant: str) -> None:
    # NaN/Infinity are not JSON; a preview metric that is undefined is stored as null.
    return None


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None, recursively, so the snapshot is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy/torch scalars and arrays from the merge lab
        return json_safe(value.tolist())
    return value


def propose(store: ReviewStore, recipe_path_or_mapping: str | os.PathLike[str] | Mapping[str, Any],
            title: str, author: str, preview: "Evidence | Mapping[str, Any] | str | os.PathLike[str] | None" = None,
            ) -> int:
    """Open a proposal for a merge recipe; returns its id.

    `recipe_path_or_mapping` is `recipe.yaml`, its directory, or the recipe mapping itself (what the
    app's Merge page holds). With a path and no explicit `preview`, `preview.json` beside the recipe
    is snapshotted when present. `preview` may also be a path to a preview JSON file. The record is the
    evidence `run_merge` builds (`analysis.workflow.evidence.Evidence`); older versions are kept as given.
    """
    source_dir: str | None = None
    if isinstance(recipe_path_or_mapping, Mapping):
        data = json_safe(dict(recipe_path_or_mapping))
        recipe = validate_recipe(data, "recipe")
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    else:
        recipe, text, file = read_recipe(recipe_path_or_mapping)
        source_dir = str(file.parent.resolve())
        if preview is None:
            preview = read_preview(file.parent / PREVIEW_FILE)
    if isinstance(preview, (str, os.PathLike)):
        preview_path = Path(preview)
        preview = read_preview(preview_path)
        if preview is None:
            raise RecipeError(f"{preview_path}: merge preview file not found")
    snapshot = json_safe(preview) if preview is not None else None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    pid = store.create_proposal(recipe=recipe, recipe_text=text, recipe_sha256=digest, title=title,
                                author=author, preview=snapshot, source_dir=source_dir)
    log.info("proposal %d opened for a %s merge of %d adapters", pid, recipe.method, len(recipe.inputs))
    return pid


def propose_merge(store: ReviewStore, run: Any, title: str, author: str) -> int:
    """Open a proposal for a merge made in this process (`analysis.workflow.MergeRun`): its recipe and its
    evidence record, exactly what `adapter-atlas merge` writes as recipe.yaml and preview.json."""
    from analysis.export.recipe import recipe_to_dict

    return propose(store, recipe_to_dict(run.recipe), title, author, preview=run.evidence)
