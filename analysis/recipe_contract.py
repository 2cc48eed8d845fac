"""The merge recipe's contract: the keys every recipe has, in one family of models.

Two readers need recipes. The review store (`analysis.review`) must keep accepting recipes written by older
or newer versions of the tool, whose methods or parameters this version may not know (so it cannot check
parameters against this version's registry): it validates against these models (unknown keys kept as data). A replay
(`analysis.export.recipe`) enforces more: its `Recipe`, `RecipeInput` and `RecipeExport` subclass these,
forbid unknown keys and check the parameters against the method's declaration.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analysis.errors import RecipeError


class RecipeInputContract(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    sha256: str = Field(min_length=1)
    format: str = Field(min_length=1)


class RecipeExportContract(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: str = Field(min_length=1)
    rank: int | None = None


class RecipeContract(BaseModel):
    """The minimal keys of a merge recipe that review relies on; anything else is kept as data."""

    model_config = ConfigDict(extra="allow")
    atlas_recipe: Literal[1]
    tool_version: str
    inputs: list[RecipeInputContract] = Field(min_length=1)
    method: str = Field(min_length=1)
    parameters: dict[str, Any]
    weights: list[float] | None = None
    export: RecipeExportContract

    @field_validator("tool_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted `0.1` as a float; the version is still meaningful as text.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


R = TypeVar("R", bound=RecipeContract)


def validated(model: type[R], data: Any, source: str, *, what: str, count_more: bool) -> R:
    """`data` validated into `model`, or one `RecipeError` line naming the source and the first bad key
    (`count_more`: and how many other problems there are)."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: {what} must be a YAML mapping, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "recipe"
        more = f" (and {len(errors) - 1} more problem(s))" if count_more and len(errors) > 1 else ""
        raise RecipeError(f"{source}: recipe key '{where}': {first['msg']}{more}") from None


def validate_recipe(data: Any, source: str) -> RecipeContract:
    """Parse a recipe mapping against the contract (what the review store keeps)."""
    return validated(RecipeContract, data, source, what="a merge recipe", count_more=True)
