"""Merge recipes: what was merged, how, and how it was exported, in a YAML file a CLI can replay.

A recipe records each input's sha256 so a replay refuses to run on changed inputs, and the method's
parameters *resolved against its declaration* (every declared parameter, defaults included), so a
recipe stays meaningful if a default changes later. The YAML text is produced deterministically
(fixed key order, no timestamps), which is what lets a replay reproduce identical bytes and lets the
safetensors metadata carry the recipe's sha256.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from analysis._version import __version__
from analysis.adapters.model import Adapter
from analysis.errors import AtlasError, RecipeError
from analysis.merge.registry import METHODS, get_method, params_model
from analysis.recipe_contract import RecipeContract, RecipeExportContract, RecipeInputContract, validated

EXPORT_FORMATS = ("peft", "diffusers", "kohya", "delta")
EXPORT_DTYPE_NAMES = ("fp32", "fp16", "bf16")
MISSING_MODULES = ("zero", "shared", "refuse")  # see analysis.workflow.coverage


class RecipeInput(RecipeInputContract):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(min_length=64, max_length=64)


class RecipePreview(BaseModel):
    """The cores (granularity, p) a face's preview used for a method that declares none of its own (the app's
    core controls), so a replay writes the same preview.json. Absent: the pipeline's default."""

    model_config = ConfigDict(extra="forbid")
    granularity: Literal["entries", "rows", "columns"]
    p: float = Field(gt=0.0, le=1.0)


class RecipeExport(RecipeExportContract):
    """How the merge is written. `rank_mode: auto` records that `rank` was chosen as the smallest rank whose
    pooled relative Frobenius error is at most `target_error` (`analysis.workflow.rank`); a replay writes
    that recorded rank (and checks it would choose it again). `extras`: carry or drop the inputs'
    non-LoRA tensors (`analysis.export.extras`). `dtype`: the stored precision (written only when not fp32,
    so recipes from before it replay byte for byte)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["peft", "diffusers", "kohya", "delta"] = "peft"
    rank: int | None = Field(default=None, ge=1)
    rank_mode: Literal["exact", "fixed", "auto"] = "exact"
    target_error: float | None = Field(default=None, gt=0.0, lt=1.0)
    extras: Literal["carry", "drop"] = "carry"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    preview: RecipePreview | None = None  # written only when set, so older recipes replay byte for byte

    @model_validator(mode="after")
    def _check_mode(self) -> "RecipeExport":
        if self.rank_mode == "exact" and self.rank is not None:
            self.rank_mode = "fixed"
        if self.rank_mode == "auto" and self.target_error is None:
            raise ValueError("rank_mode auto needs target_error (the relative Frobenius error to reach)")
        return self


class Recipe(RecipeContract):
    """The recipe schema a replay enforces (the contract, no unknown keys); `parameters` are checked against the
    method's declared `Param`s."""

    model_config = ConfigDict(extra="forbid")
    atlas_recipe: Literal[1] = 1
    tool_version: str = __version__
    inputs: list[RecipeInput] = Field(min_length=1)
    method: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    weights: list[float] | None = None
    force: bool = False  # merge inputs of different base models anyway
    missing_modules: Literal["zero", "shared", "refuse"] = "zero"  # written only when not zero (older recipes)
    export: RecipeExport = Field(default_factory=RecipeExport)

    @model_validator(mode="after")
    def _check_method(self) -> "Recipe":
        spec = get_method(self.method)  # RecipeError listing valid names
        self.parameters = spec.resolve_params(self.parameters)
        spec.resolve_weights(len(self.inputs), self.weights)
        if (self.export.format != "delta" and self.export.rank is None and self.export.rank_mode != "auto"
                and not spec.is_exact(self.parameters)):
            raise RecipeError(f"method '{self.method}' gives dense (not low-rank) updates with these parameters: "
                              f"pass --rank R to export to {self.export.format}, or use --format delta")
        return self


def recipe_json_schema() -> dict[str, Any]:
    """JSON schema of a recipe, with each method's `parameters` schema generated from its declaration."""
    schema = Recipe.model_json_schema()
    schema["x-method-parameters"] = {name: params_model(name).model_json_schema() for name in sorted(METHODS)}
    return schema


def build_recipe(adapters: Sequence[Adapter], method: str, *, parameters: Mapping[str, Any] | None = None,
                 weights: Sequence[float] | None = None, export_format: str = "peft", rank: int | None = None,
                 force: bool = False, rank_mode: str | None = None, target_error: float | None = None,
                 extras: str = "carry", preview_cores: tuple[str, float] | None = None, dtype: str = "fp32",
                 missing_modules: str = "zero") -> Recipe:
    """A recipe for merging `adapters`; input paths are stored absolute so a replay finds them from anywhere."""
    export: dict[str, Any] = {"format": export_format, "rank": rank, "extras": extras, "dtype": dtype}
    if rank_mode is not None:
        export |= {"rank_mode": rank_mode, "target_error": target_error}
    if preview_cores is not None:
        export["preview"] = {"granularity": preview_cores[0], "p": float(preview_cores[1])}
    inputs = [RecipeInput(name=a.name, path=str(Path(a.path).resolve()), sha256=a.sha256, format=a.format)
              for a in adapters]
    return parse_recipe({"inputs": [i.model_dump() for i in inputs], "method": method,
                         "parameters": dict(parameters or {}), "weights": list(weights) if weights else None,
                         "force": force, "missing_modules": missing_modules, "export": export}, "recipe")


def parse_recipe(data: Any, source: str) -> Recipe:
    """Validate a mapping into a Recipe, or raise one RecipeError line naming the source and key."""
    return validated(Recipe, data, source, what="a recipe", count_more=False)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain data in the documented key order."""
    data = recipe.model_dump(mode="json")
    if data["export"].get("preview") is None:
        data["export"].pop("preview", None)
    if data["export"].get("dtype") == "fp32":  # the default, left out so older recipes replay to the same bytes
        data["export"].pop("dtype")
    order = ["atlas_recipe", "tool_version", "inputs", "method", "parameters", "weights", "force", "missing_modules",
             "export"]
    if data.get("missing_modules") == "zero":
        order.remove("missing_modules")
    return {k: data[k] for k in order}


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True, default_flow_style=False)


def recipe_sha256(recipe: Recipe) -> str:
    return hashlib.sha256(recipe_to_yaml(recipe).encode()).hexdigest()


def load_recipe(path: str | Path) -> Recipe:
    """Read `recipe.yaml` (or a directory holding one)."""
    from analysis.adapters.limits import MAX_CONFIG_BYTES, read_regular_file

    p = Path(path)
    if p.is_dir():
        p = p / "recipe.yaml"
    try:  # a regular file only (a FIFO would block forever), bounded, strict UTF-8
        raw = bytes(read_regular_file(p, "recipe", limit=MAX_CONFIG_BYTES))
        data = yaml.safe_load(raw.decode("utf-8"))
    except AtlasError as exc:
        raise RecipeError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{p}: recipe is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_recipe(data, str(p))


def load_recipe_inputs(recipe: Recipe, *, loader=None) -> list[Adapter]:  # noqa: ANN001 - loader(path, name=)
    """Load every input and refuse (one line naming it) when its content no longer matches the sha256."""
    if loader is None:
        from analysis.adapters import load_adapter as loader
    adapters = []
    for item in recipe.inputs:
        if not Path(item.path).exists():
            raise RecipeError(f"recipe input '{item.name}': {item.path} does not exist")
        adapter = loader(Path(item.path), name=item.name)
        if adapter.sha256 != item.sha256:
            raise RecipeError(f"recipe input '{item.name}' ({item.path}) changed: sha256 {adapter.sha256[:12]}... "
                              f"!= recorded {item.sha256[:12]}...")
        adapters.append(adapter)
    return adapters
