"""`merge_adapters`: check the inputs line up, then run one registered method module by module.

Modules are the union over inputs; at a module some inputs lack, the method sees only the inputs that
have it (with their weights), which is what "that adapter's update there is zero" means for the
linear family and avoids counting absent adapters as sign votes in TIES. With `rank`, each module is
re-factored right after it is merged, so a 7B-sized dense method never holds more than one dense
module at a time (entry isolation never forms one at all: see `analysis.merge.structured`).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta
from analysis.errors import IncompatibleAdaptersError
from analysis.isolation import CoreChoice
from analysis.merge.ops import ModuleSpectrum, materialize, truncate_with_spectrum, zero_like
from analysis.merge.registry import MergeResult, ModuleContext, get_method
from analysis.progress import Progress

log = logging.getLogger(__name__)


def check_compatible(adapters: Sequence[Adapter], *, force: bool = False) -> str | None:
    """Refuse adapters of different base models (unless forced) or with clashing module shapes.

    Returns the common base model id (None when no input records one)."""
    if not adapters:
        raise IncompatibleAdaptersError("merge needs at least one adapter")
    bases = {a.base_model for a in adapters if a.base_model}
    if len(bases) > 1 and not force:
        listing = ", ".join(f"{a.name}: {a.base_model}" for a in adapters)
        raise IncompatibleAdaptersError(f"adapters have different base models ({listing}); to merge anyway pass "
                                        "--allow-different-bases (CLI) or force=True (library)")
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
                   progress: Progress | None = None, cores: CoreChoice | None = None,
                   on_module: Callable[[str, Delta, Any, ModuleSpectrum | None], None] | None = None) -> MergeResult:
    """Merge `adapters` with the registered `method`; parameters are validated against its declaration.

    Weight 0 means no contribution, in every method: such an input is treated at every module exactly as
    an input that lacks the module (it casts no sign vote, claims no core, joins no joint basis).
    With `rank`, each module is re-factored to its best rank-`rank` approximation right after it is merged
    (factored SVD when exact, a checked randomised range finder otherwise), and its spectrum is kept in
    `MergeResult.spectra`, so the fidelity at any smaller rank needs no second run. `cores`: cores computed by
    `analysis.isolation.task_cores` for these adapters in this order, with their settings; a method that
    declares cores (`MergeMethod.cores`) with the same settings reuses them (the Merge page computes them
    once for every method it compares). Torch's thread count is the caller's (`analysis.threads`).
    `on_module(module, result, merged, spectrum)` is called once per module while the exact `merged` module
    (e.g. a SparsePlusLowRank with its claims) is still alive: `analysis.workflow` previews a fixed-rank
    export there instead of recomputing the claims afterwards."""
    spec = get_method(method)
    check_compatible(adapters, force=force)
    w = spec.resolve_weights(len(adapters), weights)
    p = spec.resolve_params(params)
    shared = None
    if spec.prepare is not None:
        settings = spec.core_settings(p)  # a method that picks cores may reuse the caller's of the same settings
        given = cores.for_settings(settings) if cores is not None and settings is not None else None
        shared = spec.prepare(adapters, w, p, cores=given) if given is not None else spec.prepare(adapters, w, p)
    modules = sorted(set().union(*(a.modules for a in adapters)))
    out: dict[str, Delta] = {}
    spectra: dict[str, ModuleSpectrum] = {}
    for step, module in enumerate(modules):
        present = [i for i, a in enumerate(adapters) if module in a.modules]
        idx = tuple(i for i in present if w[i] != 0.0)
        if idx:
            deltas = [adapters[i].modules[module] for i in idx]
            merged = spec.merge_module(deltas, [w[i] for i in idx], p, ModuleContext(module, idx, shared))
        else:  # only weight-0 inputs have this module: it receives no update
            merged = zero_like(adapters[present[0]].modules[module])
        if rank is not None:
            out[module], spectra[module] = truncate_with_spectrum(merged, rank)
        else:
            out[module] = materialize(merged)
        if on_module is not None:
            on_module(module, out[module], merged, spectra.get(module))
        del merged  # one merged module alive at a time
        if progress is not None:
            progress(step + 1, len(modules), module)
    info: dict[str, Any] = {}
    if shared is not None and hasattr(shared, "summary"):
        info = shared.summary()
    cores = getattr(shared, "cores", None)
    settings = spec.core_settings(p) if cores is not None else None
    log.debug("merged %d modules of %d adapters with %s", len(out), len(adapters), method)
    return MergeResult(method=method, params=p, weights=w, modules=out, inputs=list(adapters), info=info,
                       spectra=spectra, cores=cores, core_settings=settings)
