"""`merge_adapters`: check the inputs line up, then run one registered method module by module.

Modules are the union over inputs; at a module some inputs lack, the method sees only the inputs that
have it (with their weights), which is what "that adapter's update there is zero" means for the
linear family and avoids counting absent adapters as sign votes in TIES. With `rank`, each module is
re-factored right after it is merged, so a 7B-sized dense method never holds more than one dense
module at a time.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.errors import IncompatibleAdaptersError
from analysis.merge.ops import truncate
from analysis.merge.registry import MergeResult, ModuleContext, get_method

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, module)


def check_compatible(adapters: Sequence[Adapter], *, force: bool = False) -> str | None:
    """Refuse adapters of different base models (unless forced) or with clashing module shapes.

    Returns the common base model id (None when no input records one)."""
    if not adapters:
        raise IncompatibleAdaptersError("merge needs at least one adapter")
    bases = {a.base_model for a in adapters if a.base_model}
    if len(bases) > 1 and not force:
        listing = ", ".join(f"{a.name}: {a.base_model}" for a in adapters)
        raise IncompatibleAdaptersError(f"adapters have different base models ({listing}); pass force to merge anyway")
    shapes: dict[str, tuple[str, tuple[int, int]]] = {}
    for a in adapters:
        for module, delta in a.modules.items():
            seen = shapes.setdefault(module, (a.name, delta.shape))
            if seen[1] != delta.shape:
                raise IncompatibleAdaptersError(
                    f"module {module}: {seen[0]} has shape {seen[1]} but {a.name} has {delta.shape}")
    if not shapes:
        raise IncompatibleAdaptersError(f"adapters {', '.join(a.name for a in adapters)} have no LoRA modules to merge")
    return sorted(bases)[0] if bases else None


def merge_adapters(adapters: Sequence[Adapter], method: str, *, weights: Sequence[float] | None = None,
                   params: Mapping[str, Any] | None = None, rank: int | None = None, force: bool = False,
                   progress: Progress | None = None) -> MergeResult:
    """Merge `adapters` with the registered `method`; parameters are validated against its declaration."""
    spec = get_method(method)
    check_compatible(adapters, force=force)
    w = spec.resolve_weights(len(adapters), weights)
    p = spec.resolve_params(params)
    shared = spec.prepare(adapters, w, p) if spec.prepare is not None else None
    modules = sorted(set().union(*(a.modules for a in adapters)))
    out: dict[str, Delta] = {}
    for step, module in enumerate(modules):
        idx = tuple(i for i, a in enumerate(adapters) if module in a.modules)
        deltas = [adapters[i].modules[module] for i in idx]
        merged = spec.merge_module(deltas, [w[i] for i in idx], p, ModuleContext(module, idx, shared))
        out[module] = truncate(merged, rank) if rank is not None else merged
        if progress is not None:
            progress(step + 1, len(modules), module)
    info: dict[str, Any] = {}
    if shared is not None and hasattr(shared, "summary"):
        info = shared.summary()
    log.debug("merged %d modules of %d adapters with %s", len(out), len(adapters), method)
    return MergeResult(method=method, params=p, weights=w, modules=out, inputs=list(adapters), info=info)
