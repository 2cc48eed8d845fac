"""`run_merge`: one merge, start to finish, the same for the CLI, the app and the review store.

Steps (each a library call; the faces only parse, cache and show):
1. validate at the boundary: weights finite and not all zero, inputs sharing at least one module;
   the extras (`analysis.export.extras`) are planned with the export and refused only when it is
   written (`MergeRun.write`), so the data-free comparison never depends on the extras policy;
2. merge with the registered method (`analysis.merge.merge_adapters`);
3. choose the export rank: exact for low-rank results, the user's `rank`, or automatic (smallest
   rank reaching `target_error`, `analysis.workflow.rank`); fidelity at any rank from one spectrum;
4. build the recipe (`rank_mode`, `target_error`, extras policy recorded);
5. preview the adapter written, with the method's own cores (granularity, p) when it declares them;
6. assemble the evidence record (`analysis.workflow.evidence`) that preview.json, the app's proposal
   and the review all use;
7. the steps that need a model add to the evidence of the run (`analysis.workflow.steps`): `reach_run` and
   `forecast_run` replace each task's estimate, `measure_run` adds the `measured` block.
Nothing is written until `MergeRun.write` (or `to_zip`), so a cancelled run leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.adapters.model import Adapter, Delta, LowRankDelta
from analysis.errors import IncompatibleAdaptersError, RecipeError
from analysis.export.extras import ExtrasPlan, plan_extras
from analysis.export.recipe import EXPORT_FORMATS, Recipe, build_recipe
from analysis.isolation import CoreChoice, CoreSettings
from analysis.merge.registry import MergeResult, get_method
from analysis.workflow.adapter_set import AdapterSet
from analysis.workflow.coverage import Coverage, module_coverage, restrict
from analysis.workflow.evidence import Evidence, build_evidence
from analysis.workflow.progress import ProgressReporter
from analysis.workflow.rank import DEFAULT_TARGET_ERROR, Spectrum, check_export_rank, spectrum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSpec:
    """How to write the merge: format; `rank` (a fixed rank) or automatic rank reaching `target_error`;
    extras carried or dropped. `rank_mode` None decides: fixed with a rank, else exact when the result is
    exactly low rank, else auto. A replayed recipe passes its recorded mode and rank."""

    format: str = "peft"
    rank: int | None = None
    rank_mode: str | None = None  # None | exact | fixed | auto
    target_error: float = DEFAULT_TARGET_ERROR
    extras: str = "carry"
    dtype: str = "fp32"  # stored precision: fp32 | fp16 | bf16
    missing_modules: str = "zero"  # zero | shared | refuse (`analysis.workflow.coverage`)

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "ExportSpec":
        e = recipe.export
        return cls(format=e.format, rank=e.rank, rank_mode=e.rank_mode, extras=e.extras,
                   target_error=e.target_error if e.target_error is not None else DEFAULT_TARGET_ERROR,
                   dtype=e.dtype, missing_modules=recipe.missing_modules)


def preview_from_recipe(recipe: Recipe) -> CoreChoice:
    """The preview cores a recipe records (chosen by a face for a method without its own), for its replay."""
    e = recipe.export.preview
    return CoreChoice(CoreSettings(e.granularity, float(e.p)) if e is not None else None)


@dataclass(frozen=True)
class MergeRun:
    """Everything one merge produced; `write`/`to_zip` put it on disk (atomically, via the export writer)."""

    adapters: AdapterSet
    result: MergeResult
    recipe: Recipe
    evidence: Evidence
    spectrum: Spectrum | None
    extras: ExtrasPlan
    writer_inputs: tuple[Adapter, ...]
    refactored: int | None = None  # the merge was re-factored at this rank (the cap) while it ran

    @property
    def rank(self) -> int | None:
        return self.recipe.export.rank

    def fidelity(self, rank: int | None) -> dict[str, Any]:
        """Export fidelity at any rank without re-running anything (the exact result has error 0)."""
        if self.spectrum is None or rank is None:
            return {"relative_error": 0.0, "worst_module": None, "worst_module_error": 0.0}
        return self.spectrum.fidelity(rank)

    @property
    def max_rank(self) -> int:
        """The widest export rank that can add anything: the largest min(n_out, n_in) over the merged modules.
        Ranks above the cap (summed input rank) are supported: `reexport` merges again at that rank."""
        return max((min(d.shape) for d in self.result.modules.values()), default=1)

    def written_modules(self) -> dict[str, Delta]:
        """The updates the export holds, module by module: re-factored at the export rank (PEFT/kohya) as
        the writer does (`analysis.export.layout.export_factors`), or the merge as it is (exact, delta).
        An accuracy of "the adapter written" evaluates these, not the merge kept at the cap."""
        from analysis.merge.ops import truncate

        rank = self.rank if self.recipe.export.format != "delta" else None
        if rank is None:
            return dict(self.result.modules)
        return {m: truncate(d, rank) for m, d in self.result.modules.items()}

    def write(self, out: str | Path, *, force: bool = False) -> Path:
        """The export, recipe.yaml and preview.json (the evidence) in `out`, atomically."""
        from analysis.export import export_merge

        self.extras.require()  # extras that differ refuse the export, never the merge or its preview
        return export_merge(self.result.modules, self.recipe, out, inputs=list(self.writer_inputs),
                            preview=self.evidence, force=force)

    def to_zip(self) -> tuple[str, bytes]:
        """(directory name, zip bytes) of the written export, built in a temporary directory."""
        from analysis.export import zip_directory

        root = Path(tempfile.mkdtemp(prefix="atlas-merge-"))
        try:
            out = self.write(root / f"merged-{self.result.method}")
            return out.name, zip_directory(out)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def diagnostic_cores(method: str, params: Mapping[str, Any], default: CoreSettings | None) -> CoreSettings:
    """(granularity, p) of the preview's cores: the method's own when it declares cores, else `default`, else
    the isolation method's declared defaults (the paper's top 1% of entries)."""
    own = get_method(method).core_settings(params)
    if own is not None:
        return own
    if default is not None:
        return CoreSettings(str(default[0]), float(default[1]))
    iso = get_method("isolation")
    return CoreSettings(str(iso.param("granularity").default), float(iso.param("p").default))


def _cap(adapters: AdapterSet, weights: Sequence[float] | None = None) -> int:
    """Summed input rank of the inputs that contribute (weight 0 adds nothing, so no width either): the widest
    a merge of these inputs needs to be."""
    w = list(weights) if weights else [1.0] * len(adapters)
    return max(1, sum(max((d.rank for d in a.modules.values()), default=1)
                      for a, wi in zip(adapters.adapters, w) if wi != 0.0))


def _rank_choice(spec: ExportSpec, exact: bool, spec_of: Spectrum | None) -> tuple[str, int | None, bool | None]:
    """(rank_mode, rank, target reached) for the export."""
    if spec.format == "delta":
        return "exact", None, None
    mode = spec.rank_mode or ("fixed" if spec.rank is not None else ("exact" if exact else "auto"))
    if mode == "exact":
        if not exact:
            raise RecipeError(f"the merge result is dense (not low rank): pass --rank R to export it to {spec.format}, "
                              "or use --format delta")
        return mode, None, None
    if mode == "fixed":
        if spec.rank is None or spec.rank < 1:
            raise RecipeError(f"export rank {spec.rank!r}: expected a positive integer")
        return mode, spec.rank, None
    assert spec_of is not None
    chosen, reached = spec_of.smallest_rank(spec.target_error)
    if spec.rank is not None and spec.rank != chosen:  # replay of a recorded automatic rank
        log.warning("recipe records automatic rank %d, this run would choose %d: writing the recorded rank",
                    spec.rank, chosen)
        return mode, spec.rank, spec_of.error(spec.rank) <= spec.target_error
    return mode, chosen, reached


def _plain(value: Any) -> Any:
    """numpy / torch values in method diagnostics as JSON-ready Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


@dataclass(frozen=True)
class _Run:
    """What every step of one run needs besides the merge: the preview's cores (None: no preview), the
    progress reporter, and the preview rows computed while merging (`_fused_preview`)."""

    preview: CoreChoice | None
    reporter: ProgressReporter
    fused: Mapping[str, list] = dataclasses.field(default_factory=dict)


def _preview_choice(preview: bool | CoreChoice) -> CoreChoice | None:
    if isinstance(preview, CoreChoice):
        return preview
    return CoreChoice() if preview else None


def run_merge(adapters: AdapterSet | Sequence[Adapter], method: str,
              params: Mapping[str, Any] | None = None, weights: Sequence[float] | None = None,
              export: ExportSpec | None = None, *, preview: bool | CoreChoice = True,
              progress: ProgressReporter | None = None) -> MergeRun:
    """Merge `adapters` with `method` and prepare the export, its recipe and its evidence (nothing written).

    `adapters`: an `AdapterSet` or a list of Adapters (`AdapterSet.of`). `preview`: False for none; True for
    the method's own cores, else the isolation defaults; a `CoreChoice` names the cores for a method that
    declares none (recorded in the recipe) and may carry them computed (the app caches them across
    methods). Torch's thread count is the caller's: faces run this inside `analysis.threads.bounded_threads`."""
    from analysis.merge import merge_adapters

    adapters = AdapterSet.of(adapters)
    export = export or ExportSpec()
    run = _Run(_preview_choice(preview), progress or ProgressReporter(), {})
    if export.format not in EXPORT_FORMATS:
        raise RecipeError(f"export format '{export.format}' is not one of {', '.join(EXPORT_FORMATS)}")
    if len(adapters) == 0:
        raise IncompatibleAdaptersError("merge needs at least one adapter")
    # 1. validate at the boundary (the registry's one weight rule: finite, one per input, not all 0)
    spec = get_method(method)
    w = spec.resolve_weights(len(adapters), weights) if weights is not None else None
    resolved = spec.resolve_params(params)
    check_export_rank(adapters.adapters, export.rank if export.format != "delta" else None)
    if len(adapters) > 1:
        adapters.require_shared()
    coverage = module_coverage(adapters.adapters, export.missing_modules)  # `refuse` stops here, naming them
    merge_inputs = restrict(adapters.adapters, coverage) if coverage.policy == "shared" else adapters.adapters
    run.reporter.check()
    # 2. merge; an export that needs re-factoring is re-factored at the cap module by module as it merges
    cap = max(_cap(adapters, w), export.rank or 0)
    refactor = export.format != "delta" and (export.rank is not None or export.rank_mode in ("auto", "fixed")
                                             or not spec.is_exact(resolved))
    given = run.preview if run.preview is not None and run.preview.computed is not None else None
    hook = _fused_preview(adapters, export, spec.core_settings(resolved), w, run.fused) if (
        run.preview is not None and refactor) else None
    result = merge_adapters(list(merge_inputs), method, weights=w, params=resolved,
                            force=adapters.allow_different_bases, rank=cap if refactor else None,
                            progress=run.reporter.stage("merge"), cores=given, on_module=hook)
    spec_of = None
    if export.format != "delta":
        kept = getattr(result, "spectra", None) or {}
        if refactor and set(kept) == set(result.modules):
            spec_of = Spectrum(dict(kept), cap)
        else:
            spec_of = spectrum(result.modules, cap, progress=run.reporter.stage("export rank"))
    return _export(adapters, result, spec_of, export, run, refactored=cap if refactor else None,
                   coverage=coverage)


def _fused_preview(adapters: AdapterSet, export: ExportSpec, cores: CoreSettings | None,
                   weights: Sequence[float] | None, into: dict[str, list]) -> Any:
    """A merge hook that previews each module as it is merged, when that is the same preview: a fixed export
    rank (so the module written is known while merging), the method's own entry cores (the isolation merge
    hands over the claims it built: no second pass over them), every input contributing."""
    from analysis.preview import TOL, export_view, module_rows

    fixed = export.format != "delta" and export.rank is not None and export.rank_mode in (None, "fixed")
    if not fixed or cores is None or cores.granularity != "entries" or (
            weights is not None and any(float(x) == 0.0 for x in weights)):
        return None
    inputs, p = list(adapters.adapters), float(cores.p)

    def hook(module: str, result: Any, merged: Any, spectrum: Any) -> None:
        runs = getattr(merged, "claims", None)
        if runs is None or runs.n != sum(module in a.modules for a in inputs):
            return  # the merge kept no claims here: the preview computes them afterwards
        written = export_view(result, export.rank, spectrum)[0]
        into[module] = module_rows(inputs, module, written, granularity="entries", p=p, tol=TOL, weights=weights,
                                   runs=runs)

    return hook


def reexport(run: MergeRun, export: ExportSpec, *, preview: bool | CoreChoice = True,
             progress: ProgressReporter | None = None) -> MergeRun:
    """The same merge written another way (format, rank, extras) without a second merge when the merge
    kept what is needed; the preview is redone because it describes the adapter written at the new rank.
    A merge re-factored at the cap is merged again for a delta export or a rank above the cap."""
    ctx = _Run(_preview_choice(preview), progress or ProgressReporter(), {})
    cut = run.refactored
    check_export_rank(run.adapters.adapters, export.rank if export.format != "delta" else None)
    if export.missing_modules != run.recipe.missing_modules or (
            cut is not None and (export.format == "delta" or (export.rank or 0) > cut)):
        return run_merge(run.adapters, run.result.method, run.result.params, run.result.weights, export,
                         preview=preview, progress=ctx.reporter)
    spec_of = run.spectrum
    if export.format != "delta" and (spec_of is None or (export.rank or 0) > spec_of.cap):
        spec_of = spectrum(run.result.modules, max(_cap(run.adapters, run.result.weights), export.rank or 0),
                           progress=ctx.reporter.stage("export rank"))
    return _export(run.adapters, run.result, spec_of, export, ctx, refactored=cut)


def _export(adapters: AdapterSet, result: MergeResult, spec_of: Spectrum | None, export: ExportSpec, run: _Run, *,
            refactored: int | None, coverage: Coverage | None = None) -> MergeRun:
    """Steps 3-6: export rank, recipe, preview of the adapter written, evidence."""
    from analysis.preview import preview_merge

    coverage = coverage or module_coverage(adapters.adapters, export.missing_modules)

    extras = plan_extras(adapters.adapters, export.extras, export_format=export.format, strict=False)
    writer_inputs = adapters.adapters if extras.policy == "carry" else tuple(
        dataclasses.replace(a, extras={}, _sha256=a.sha256) for a in adapters.adapters)
    # 3. export rank
    method = get_method(result.method)
    exact = all(isinstance(d, LowRankDelta) for d in result.modules.values()) and (
        refactored is None or method.is_exact(result.params))
    mode, rank, reached = _rank_choice(export, exact, spec_of)
    # 4. recipe (with the preview's cores when a face chose them for a method without its own)
    chosen = run.preview.settings if run.preview is not None else None
    recorded = chosen if method.core_settings(result.params) is None else None
    recipe = build_recipe(list(adapters.adapters), result.method, parameters=result.params,
                          weights=result.weights,
                          export_format=export.format, rank=rank, force=adapters.allow_different_bases,
                          rank_mode=mode, target_error=export.target_error if mode == "auto" else None,
                          extras=extras.policy, preview_cores=recorded,
                          dtype=export.dtype, missing_modules=coverage.policy)
    # 5. preview of the adapter written
    pv = None
    if run.preview is not None:
        settings = diagnostic_cores(result.method, result.params, chosen)
        cores = run.preview.for_settings(settings)  # the caller's cores, when computed with these settings
        own = getattr(result, "cores", None)  # the cores the method itself used, when it kept them
        if own is not None and result.core_settings == settings:
            cores = own
        pv = preview_merge(list(adapters.adapters), result.modules, rank=rank, granularity=settings.granularity,
                           p=settings.p, cores=cores, progress=run.reporter.stage("preview"),
                           spectra=dict(spec_of.modules) if spec_of is not None else None,
                           weights=result.weights, precomputed=run.fused if rank == export.rank else None)
    # 6. evidence
    fidelity = spec_of.fidelity(rank) if (spec_of is not None and rank is not None) else \
        {"relative_error": 0.0, "worst_module": None, "worst_module_error": 0.0}
    export_info = {"format": export.format, "rank": rank, "rank_mode": mode,
                   "target_error": export.target_error if mode == "auto" else None, "reached": reached,
                   "cap": spec_of.cap if spec_of is not None else None, **fidelity,
                   **_storage(result.modules, recipe, adapters.adapters)}
    evidence = build_evidence(inputs=list(zip(adapters.names, adapters.sha256s)),
                              merge=dataclasses.replace(result, info=_plain(result.info)), preview=pv,
                              export=export_info, extras=extras.summary())
    evidence["modules"] = coverage.summary()
    run.reporter.step("done", 1, 1)
    return MergeRun(adapters=adapters, result=result, recipe=recipe, evidence=evidence, spectrum=spec_of,
                    extras=extras, writer_inputs=tuple(writer_inputs), refactored=refactored)


def _storage(modules: Mapping[str, Delta], recipe: Recipe, inputs: Sequence[Adapter]) -> dict[str, Any]:
    """The stored file's fidelity (`analysis.export.fidelity`): the export's tensors rendered as the writer renders
    them, in the export dtype (without the extras, which do not touch the modules), read back per module."""
    from analysis.export.fidelity import storage_fidelity
    from analysis.export.writer import render_tensors

    bare = [dataclasses.replace(a, extras={}, _sha256=a.sha256) if a.extras else a for a in inputs]
    stored = render_tensors(modules, recipe, inputs=bare)[1][0]
    return storage_fidelity(modules, stored, fmt=recipe.export.format, rank=recipe.export.rank,
                            dtype_name=recipe.export.dtype)
