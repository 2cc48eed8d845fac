"""One registry of merge methods, each declaring its parameters once.

Why a declaration rather than reading function signatures: the CLI (`--param key=value`), the
recipe schema (pydantic) and the app's controls are all generated from the same `Param` list, so a
parameter's type, default, range and help text can never disagree between the three faces.
Registration is explicit (`@register(...)` adds one entry to `METHODS`); lookup of an unknown name
raises a `RecipeError` that lists the valid names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.errors import RecipeError
from analysis.isolation import CoreSettings

ParamValue = int | float | bool | str


@dataclass(frozen=True)
class Param:
    """One declared parameter: the single source for CLI parsing, recipe validation and app controls."""

    name: str
    type: type  # int | float | bool | str
    default: ParamValue
    help: str
    low: float | None = None  # inclusive lower bound (numbers)
    high: float | None = None  # inclusive upper bound (numbers)
    choices: tuple[str, ...] | None = None  # allowed values (strings)

    def coerce(self, value: Any, *, method: str) -> ParamValue:
        """Turn a CLI string, YAML scalar or widget value into this parameter's type, then check its range."""
        where = f"method '{method}' parameter '{self.name}'"
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in {"true", "false", "1", "0", "yes", "no"}:
                        raise ValueError(value)
                    out: ParamValue = low in {"true", "1", "yes"}
                else:
                    out = bool(value)
            elif self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                out = float(value)
            else:
                out = "" if value is None else str(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: expected {self.type.__name__}, got {value!r}") from None
        if isinstance(out, float) and not math.isfinite(out):  # NaN passes every comparison below
            raise RecipeError(f"{where}: {out} is not a finite number")
        if self.low is not None and isinstance(out, (int, float)) and out < self.low:
            raise RecipeError(f"{where}: {out} is below the minimum {self.low}")
        if self.high is not None and isinstance(out, (int, float)) and out > self.high:
            raise RecipeError(f"{where}: {out} is above the maximum {self.high}")
        if self.choices is not None and out not in self.choices:
            raise RecipeError(f"{where}: {out!r} is not one of {', '.join(self.choices)}")
        return out

    def describe(self) -> str:
        bounds = ""
        if self.choices:
            bounds = f" one of {'|'.join(self.choices)}"
        elif self.low is not None or self.high is not None:
            bounds = f" in [{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}]"
        return f"{self.name} ({self.type.__name__}, default {self.default!r}{bounds}): {self.help}"


@dataclass(frozen=True)
class ModuleContext:
    """What a per-module merge function may know beyond its deltas: the module name, the input
    adapters' indices present at this module, and whatever the method's `prepare` computed once."""

    module: str
    indices: tuple[int, ...]
    shared: Any = None


# merge_module(deltas, weights, params, ctx) -> Delta (or a SparsePlusLowRank that `merge_adapters` re-factors
# or materialises); deltas are the inputs present at this module with a nonzero weight
ModuleFn = Callable[[Sequence[Delta], Sequence[float], Mapping[str, ParamValue], ModuleContext], Delta]
# prepare(adapters, weights, params, cores=None) -> shared state for every module (e.g. isolation's task groups);
# `cores` = `analysis.isolation.Cores` the caller computed for every input with this method's own core settings
# (passed only to a method that declares `cores=True`), reused instead of recomputed
PrepareFn = Callable[..., Any]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    merge_module: ModuleFn
    params: tuple[Param, ...]
    help: str
    default_weight: str = "one"  # "one" (each weight 1) | "mean" (each weight 1/N)
    min_inputs: int = 1
    max_inputs: int | None = None
    # result stays a LowRankDelta, so PEFT export needs no --rank; a function of the parameters when it depends
    exact_lowrank: bool | Callable[[Mapping[str, ParamValue]], bool] = False
    prepare: PrepareFn | None = None
    # the method picks task cores itself, with its `granularity` and `p` parameters: a preview measures
    # retention on those cores, and the caller's precomputed cores of the same settings can be reused
    cores: bool = False

    def core_settings(self, params: Mapping[str, ParamValue]) -> CoreSettings | None:
        """(granularity, p) of the cores this method uses with these parameters; None when it uses none."""
        return CoreSettings(str(params["granularity"]), float(params["p"])) if self.cores else None

    def is_exact(self, params: Mapping[str, ParamValue]) -> bool:
        """Whether low-rank inputs give a low-rank (exactly exportable) result with these parameters."""
        return self.exact_lowrank(params) if callable(self.exact_lowrank) else bool(self.exact_lowrank)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.params) or "(none)"
        raise RecipeError(f"method '{self.name}' has no parameter '{name}'; valid: {valid}")

    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, ParamValue]:
        """Declared defaults overridden by `given`, each coerced and range-checked; unknown keys refused."""
        given = dict(given or {})
        for key in given:
            self.param(key)
        return {p.name: p.coerce(given.get(p.name, p.default), method=self.name) for p in self.params}

    def resolve_weights(self, n: int, weights: Sequence[float] | None) -> list[float]:
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            most = "" if self.max_inputs is None else f" and at most {self.max_inputs}"
            raise RecipeError(f"method '{self.name}' needs at least {self.min_inputs}{most} adapters, got {n}")
        if weights is None or len(weights) == 0:
            return [1.0 / n if self.default_weight == "mean" else 1.0] * n
        if len(weights) != n:
            raise RecipeError(f"method '{self.name}': {len(weights)} weights given for {n} adapters")
        out = []
        for i, w in enumerate(weights):
            try:
                value = float(w)
            except (TypeError, ValueError):
                raise RecipeError(f"method '{self.name}': weight {i + 1} is {w!r}, expected a number") from None
            if not math.isfinite(value):
                raise RecipeError(f"method '{self.name}': weight {i + 1} is {value}, expected a finite number")
            out.append(value)
        if not any(out):
            raise RecipeError(f"method '{self.name}': every weight is 0, so no adapter would contribute")
        return out


METHODS: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    params: Sequence[Param] = (),
    help: str,
    default_weight: str = "one",
    min_inputs: int = 1,
    max_inputs: int | None = None,
    exact_lowrank: bool | Callable[[Mapping[str, ParamValue]], bool] = False,
    prepare: PrepareFn | None = None,
    cores: bool = False,
) -> Callable[[ModuleFn], ModuleFn]:
    """Decorator adding a per-module merge function to `METHODS` under `name`. `cores=True` declares that the
    method picks task cores with its parameters `granularity` and `p` (which it must then declare)."""

    def add(fn: ModuleFn) -> ModuleFn:
        if name in METHODS:
            raise ValueError(f"merge method '{name}' registered twice")
        if cores and not {"granularity", "p"} <= {p.name for p in params}:
            raise ValueError(f"merge method '{name}' declares cores but not the parameters granularity and p")
        METHODS[name] = MergeMethod(name, fn, tuple(params), help, default_weight, min_inputs,
                                    max_inputs, exact_lowrank, prepare, cores)
        return fn

    return add


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(f"unknown merge method '{name}'; valid: {', '.join(sorted(METHODS))}") from None


def parse_param_strings(items: Sequence[str]) -> dict[str, str]:
    """`["density=0.2", "seed=3"]` -> {"density": "0.2", "seed": "3"}; values are coerced later by the method."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--param '{item}': expected key=value")
        out[key.strip()] = value.strip()
    return out


def params_model(method: str) -> type:
    """A pydantic model of one method's parameters, generated from its declaration (for the recipe's JSON
    schema and any boundary that wants pydantic validation); `Param.coerce` gives the friendlier errors."""
    from typing import Literal

    from pydantic import ConfigDict, Field, create_model

    spec = get_method(method)
    fields: dict[str, Any] = {}
    for p in spec.params:
        kind: Any = Literal[p.choices] if p.choices else p.type  # type: ignore[valid-type]
        fields[p.name] = (kind, Field(default=p.default, ge=p.low, le=p.high, description=p.help))
    return create_model(f"{method}_parameters", __config__=ConfigDict(extra="forbid"), **fields)


def describe_methods() -> list[dict[str, Any]]:
    """Plain data for `--list-methods`, the app and docs."""
    return [
        {"name": m.name, "help": m.help, "default_weight": m.default_weight, "min_inputs": m.min_inputs,
         "max_inputs": m.max_inputs,
         "exact_lowrank": "depends on parameters" if callable(m.exact_lowrank) else m.exact_lowrank,
         "cores": m.cores,
         "params": [{"name": p.name, "type": p.type.__name__, "default": p.default, "low": p.low,
                     "high": p.high, "choices": list(p.choices) if p.choices else None, "help": p.help}
                    for p in m.params]}
        for m in sorted(METHODS.values(), key=lambda m: m.name)
    ]


@dataclass(frozen=True)
class MergeResult:
    """A merged adapter: one delta per module, plus what produced it (for recipes and previews)."""

    method: str
    params: dict[str, ParamValue]
    weights: list[float]
    modules: dict[str, Delta]
    inputs: list[Adapter] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # method diagnostics (e.g. isolation conflicts)
    # module -> `analysis.merge.ops.ModuleSpectrum` of the exact merge, when `rank` re-factored it: the
    # export fidelity at any rank up to its length, without the exact merge kept (pass to `preview_merge`)
    spectra: dict[str, Any] = field(default_factory=dict)
    # the method's own cores (`analysis.isolation.Cores`) and their (granularity, p), when it computed them
    cores: Any = None
    core_settings: CoreSettings | None = None
