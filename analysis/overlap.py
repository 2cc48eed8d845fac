"""Per-module, all-pairs overlap tables between adapters of one base model.

For each module shared by all adapters, one `ModuleOverlap` holds every pair at once: cosine of
the updates, subspace similarity of their output and input spaces, principal angles, and the
asymmetric energy overlap. One Gram computation and one factored SVD per adapter per module feed
all of it (see `analysis.linalg`), so N adapters cost N SVDs, not N^2 dense comparisons.
Module-level tables are then aggregated, energy-weighted, to adapter-level matrices and sliced by
layer and module type for the app's heatmaps.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, adapter_list
from analysis.errors import AtlasError, IncompatibleAdaptersError
from analysis.linalg import block_sums, delta_svd, gram_all_pairs, principal_angles
from analysis.progress import Progress

if TYPE_CHECKING:
    from analysis.workflow import AdapterSet

log = logging.getLogger(__name__)

METRICS = ("cosine", "subspace_similarity", "input_subspace_similarity", "energy_overlap", "mean_angle_deg")


@dataclass(frozen=True, eq=False)
class ModuleOverlap:
    """All-pairs overlap of N adapters on one module. Matrices are (N, N), rows/columns in `adapters` order.

    `energy_overlap[i, j]` is the share of adapter i's energy inside j's column space (asymmetric);
    `principal_angles_deg[i][j]` is the ascending 1-D array of output-space angles in degrees.
    `union_sv` are the singular values of [U_1 .. U_N] (the stacked output bases), which capacity
    analysis reads: how many dimensions of the layer the adapters occupy together.
    An all-zero update (e.g. an untrained LoRA with B = 0) has rank 0: cosine, similarity and
    energy overlap 0 and mean angle 90 against everything, including itself.
    """

    module: str
    adapters: tuple[str, ...]
    shape: tuple[int, int]
    norm: np.ndarray  # (N,)
    cosine: np.ndarray  # (N, N)
    subspace_similarity: np.ndarray  # (N, N) phi at full ranks, output space
    input_subspace_similarity: np.ndarray  # (N, N) phi at full ranks, input space
    energy_overlap: np.ndarray  # (N, N)
    principal_angles_deg: list[list[np.ndarray]]  # N x N of (min(k_i, k_j),)
    mean_angle_deg: np.ndarray  # (N, N)
    spectra: list[np.ndarray]  # N of (k_i,)
    union_sv: np.ndarray  # (sum k_i,)

    @property
    def ranks(self) -> list[int]:
        """Numerical rank of each adapter's update on this module."""
        return [int(s.size) for s in self.spectra]

    def to_json(self) -> dict[str, Any]:
        """Plain lists for JSON: the CLI's `--json` output and the app's downloads."""
        return {
            "adapters": list(self.adapters),
            "shape": list(self.shape),
            "norm": self.norm.tolist(),
            "rank": self.ranks,
            "cosine": self.cosine.tolist(),
            "subspace_similarity": self.subspace_similarity.tolist(),
            "input_subspace_similarity": self.input_subspace_similarity.tolist(),
            "energy_overlap": self.energy_overlap.tolist(),
            "principal_angles_deg": [[a.tolist() for a in row] for row in self.principal_angles_deg],
            "mean_angle_deg": self.mean_angle_deg.tolist(),
            "spectra": [s.tolist() for s in self.spectra],
        }


def shared_modules(adapters: Sequence[Adapter], modules_regex: str | None = None) -> list[str]:
    """Modules present in every adapter with one shape (optionally filtered by `re.search`), sorted.

    Modules shared by name but not by shape (e.g. a fused vs split projection) are skipped with a
    warning; if nothing is left the adapters cannot be compared and we say why.
    """
    if not adapters:
        raise IncompatibleAdaptersError("no adapters given")
    names = ", ".join(a.name for a in adapters)
    common = set(adapters[0].modules)
    for a in adapters[1:]:
        common &= set(a.modules)
    if modules_regex is not None:
        try:
            pattern = re.compile(modules_regex)
        except re.error as exc:
            raise AtlasError(f"--modules {modules_regex!r} is not a valid regular expression: {exc}") from None
        common = {m for m in common if pattern.search(m)}
    kept = []
    for m in sorted(common):
        shapes = {tuple(a.modules[m].shape) for a in adapters}
        if len(shapes) == 1:
            kept.append(m)
        else:
            log.warning("module %s skipped: shapes differ across adapters %s", m, sorted(shapes))
    if not kept:
        where = f" matching {modules_regex!r}" if modules_regex is not None else ""
        counts = "; ".join(f"{a.name}: {len(a.modules)} modules" for a in adapters)
        raise IncompatibleAdaptersError(
            f"adapters {names} share no module{where} with equal shapes ({counts}); are they adapters of one base model?"
        )
    return kept


def _pair_block_sums(C: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    """||U_i^T U_j||_F^2 for all pairs from the stacked Gram C = Ucat^T Ucat."""
    return block_sums(C ** 2, ranks)  # (N, N)


def _phi(pair: torch.Tensor, ranks: list[int]) -> np.ndarray:
    r = torch.tensor(ranks, dtype=torch.float64)  # (N,)
    min_r = torch.minimum(r[:, None], r[None, :])  # (N, N)
    phi = torch.where(min_r > 0, pair / min_r.clamp_min(1.0), torch.zeros_like(pair))  # (N, N)
    return phi.clamp(0.0, 1.0).numpy()


def module_overlap(deltas: Sequence[Delta], names: Sequence[str], module: str) -> ModuleOverlap:
    """Every pairwise overlap measure of one module's N deltas, from one Gram and N factored SVDs."""
    if len(deltas) != len(names):
        raise ValueError(f"module_overlap: {len(deltas)} deltas but {len(names)} names")
    n = len(deltas)
    # 1. cosines from the Gram of the updates
    G = gram_all_pairs(deltas)  # (N, N)
    norm = np.sqrt(np.clip(np.diag(G), 0.0, None))  # (N,)
    denom = np.outer(norm, norm)  # (N, N)
    cosine = np.clip(np.divide(G, denom, out=np.zeros_like(G), where=denom > 0), -1.0, 1.0)  # (N, N)
    np.fill_diagonal(cosine, (norm > 0).astype(float))
    # 2. one thin SVD per adapter, stacked bases
    svds = [delta_svd(d) for d in deltas]
    ranks = [int(s.numel()) for _, s, _ in svds]
    if any(k == 0 for k in ranks):
        log.warning("module %s: all-zero update in %s", module, [nm for nm, k in zip(names, ranks) if k == 0])
    u_cat = torch.cat([u for u, _, _ in svds], dim=1)  # (n_out, K)
    v_cat = torch.cat([v for _, _, v in svds], dim=1)  # (n_in, K)
    s_cat = torch.cat([s for _, s, _ in svds])  # (K,)
    c_u = u_cat.T @ u_cat  # (K, K) all U_i^T U_j blocks
    c_v = v_cat.T @ v_cat  # (K, K)
    # 3. subspace similarity (Hu et al.) and energy overlap, all pairs by block sums
    phi_out = _phi(_pair_block_sums(c_u, ranks), ranks)
    phi_in = _phi(_pair_block_sums(c_v, ranks), ranks)
    inside = block_sums(c_u ** 2 * (s_cat ** 2)[:, None], ranks).numpy()  # (N, N) ||U_j^T U_i S_i||^2
    energy_i = norm ** 2  # (N,)
    energy = np.clip(np.divide(inside, energy_i[:, None], out=np.zeros_like(inside),
                               where=energy_i[:, None] > 0), 0.0, 1.0)  # (N, N)
    # 4. principal angles per pair (sine route for the small ones)
    angles: list[list[np.ndarray]] = [[np.zeros(0)] * n for _ in range(n)]
    mean_angle = np.full((n, n), 90.0)  # (N, N)
    for i in range(n):
        angles[i][i] = np.zeros(ranks[i])
        if ranks[i]:
            mean_angle[i, i] = 0.0
        for j in range(i + 1, n):
            deg = np.degrees(principal_angles(svds[i][0], svds[j][0]))  # (min(k_i, k_j),)
            angles[i][j] = angles[j][i] = deg
            if deg.size:
                mean_angle[i, j] = mean_angle[j, i] = float(deg.mean())
    # 5. singular values of the stacked bases, for capacity (eigenvalues of the small Gram)
    union_sv = torch.linalg.eigvalsh(c_u).clamp_min(0.0).sqrt().flip(0).numpy()  # (K,)
    return ModuleOverlap(
        module=module, adapters=tuple(names), shape=tuple(deltas[0].shape), norm=norm, cosine=cosine,
        subspace_similarity=phi_out, input_subspace_similarity=phi_in, energy_overlap=energy,
        principal_angles_deg=angles, mean_angle_deg=mean_angle,
        spectra=[s.numpy() for _, s, _ in svds], union_sv=union_sv,
    )


def overlap_table(
    adapters: "AdapterSet | Sequence[Adapter]", *, modules_regex: str | None = None, progress: Progress | None = None
) -> dict[str, ModuleOverlap]:
    """`ModuleOverlap` for every shared module, in sorted module order.

    `adapters`: an `AdapterSet` or a list of Adapters (`analysis.adapters.adapter_list`).
    `progress(done, total, module)` is called after each module, so a UI bar can reach 100%.
    """
    adapters = adapter_list(adapters)
    modules = shared_modules(adapters, modules_regex)
    names = [a.name for a in adapters]
    table: dict[str, ModuleOverlap] = {}
    for done, m in enumerate(modules, start=1):
        table[m] = module_overlap([a.modules[m] for a in adapters], names, m)
        if progress is not None:
            progress(done, len(modules), m)
    return table


# ---- aggregation over modules -------------------------------------------------------------------

# SD block paths, most specific first: the layer ends at the innermost block that owns the module
_SD_LAYERS = tuple(re.compile(rf"^(?P<layer>.*{tail})\.(?P<type>.+)$") for tail in (
    r"transformer_blocks\.\d+", r"(?:resnets|attentions|downsamplers|upsamplers)\.\d+",
    r"(?:down_blocks|up_blocks)\.\d+", r"mid_block",
))
_LLM_LAYER = re.compile(r"^(?P<prefix>.*?)(?:^|\.)(?:layers|layer|h|blocks|block)\.(?P<idx>\d+)\.(?P<type>.+)$")


def parse_module_name(name: str) -> tuple[int | str, str]:
    """(layer, module type) of a canonical module name, for layer sliders and layer x type heatmaps.

    LLMs: `model.layers.3.self_attn.q_proj` -> (3, "self_attn.q_proj"), also GPT-2 `h.N` and BERT
    `layer.N`. SD UNets have no single layer index, so the block path is the layer:
    `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` ->
    ("down_blocks.0.attentions.0.transformer_blocks.0", "attn1.to_q"). Text-encoder layers of an SD
    adapter keep their prefix ("text_encoder.layers.3") so they never collide with an LLM index.
    Anything else: (parent path, last component).
    """
    if any(tag in name for tag in ("down_blocks", "up_blocks", "mid_block")):
        for pattern in _SD_LAYERS:
            m = pattern.match(name)
            if m:
                return m.group("layer"), m.group("type")
    m = _LLM_LAYER.match(name)
    if m:
        prefix, idx = m.group("prefix"), int(m.group("idx"))
        if prefix.startswith("text_encoder"):
            return f"{prefix.split('.')[0]}.layers.{idx}", m.group("type")
        return idx, m.group("type")
    parent, _, last = name.rpartition(".")
    return parent, last


def layer_sort_key(layer: int | str) -> tuple:
    """Order layers as a model runs them: LLM indices, then text encoders, SD down, mid, up blocks."""
    if isinstance(layer, int):
        return (0, 0, (layer,), "")
    kinds = ("text_encoder", "down_blocks", "mid_block", "up_blocks")
    kind = next((k for k, tag in enumerate(kinds) if tag in layer), len(kinds))
    return (1, kind, tuple(int(x) for x in re.findall(r"\d+", layer)), layer)


def modules_by_layer(table: dict[str, ModuleOverlap]) -> dict[int | str, list[str]]:
    """Module names grouped by parsed layer, layers in model order."""
    groups: dict[int | str, list[str]] = {}
    for m in table:
        groups.setdefault(parse_module_name(m)[0], []).append(m)
    return {k: groups[k] for k in sorted(groups, key=layer_sort_key)}


def _aggregate(tables: list[ModuleOverlap], metric: str) -> np.ndarray:
    norms = np.stack([t.norm for t in tables])  # (M, N)
    values = np.stack([getattr(t, metric) for t in tables])  # (M, N, N)
    if metric == "cosine":
        # the cosine of the whole adapters restricted to these modules: sum of inner products / norms
        inner = (values * norms[:, :, None] * norms[:, None, :]).sum(0)  # (N, N)
        total = np.sqrt((norms ** 2).sum(0))  # (N,)
        denom = np.outer(total, total)
        out = np.divide(inner, denom, out=np.zeros_like(inner), where=denom > 0)
        np.fill_diagonal(out, (total > 0).astype(float))
        return np.clip(out, -1.0, 1.0)
    if metric == "energy_overlap":
        # share of adapter i's total energy that lies in j's column spaces, module by module
        w = (norms ** 2)[:, :, None] * np.ones_like(values)  # (M, N, N) row weights
    else:
        w = norms[:, :, None] * norms[:, None, :]  # (M, N, N) symmetric pair weights
    wsum = w.sum(0)  # (N, N)
    plain = values.mean(0)  # fallback where every module of a pair is all-zero
    return np.where(wsum > 0, (w * values).sum(0) / np.where(wsum > 0, wsum, 1.0), plain)


def aggregate(
    table: dict[str, ModuleOverlap], metric: str, *, group_by: str | None = None,
    modules: Sequence[str] | None = None,
) -> np.ndarray | dict[int | str, np.ndarray]:
    """Energy-weighted aggregate of one metric over modules -> (N, N), or {group: (N, N)} by layer or type.

    Weights follow what each metric measures: cosine becomes the cosine of the concatenated updates
    (exact), energy overlap the share of i's total energy (weights ||dW_i||^2), and the subspace
    measures a mean weighted by ||dW_i|| ||dW_j||, so a near-zero module cannot swing the result.
    """
    if metric not in METRICS:
        raise AtlasError(f"unknown overlap metric {metric!r}; choose one of {', '.join(METRICS)}")
    names = list(table) if modules is None else [m for m in modules if m in table]
    if not names:
        raise IncompatibleAdaptersError("no modules to aggregate over")
    if group_by is None:
        return _aggregate([table[m] for m in names], metric)
    if group_by not in ("layer", "type"):
        raise AtlasError(f"group_by must be 'layer' or 'type', got {group_by!r}")
    part = 0 if group_by == "layer" else 1
    groups: dict[int | str, list[ModuleOverlap]] = {}
    for m in names:
        groups.setdefault(parse_module_name(m)[part], []).append(table[m])
    keys = sorted(groups, key=layer_sort_key) if part == 0 else sorted(groups)
    return {k: _aggregate(groups[k], metric) for k in keys}


def _index(table: dict[str, ModuleOverlap], who: int | str) -> int:
    adapters = next(iter(table.values())).adapters
    if isinstance(who, int):
        return who
    if who not in adapters:
        raise AtlasError(f"unknown adapter {who!r}; known: {', '.join(adapters)}")
    return adapters.index(who)


def pair_layer_module_matrix(
    table: dict[str, ModuleOverlap], i: int | str, j: int | str, metric: str
) -> tuple[list[int | str], list[str], np.ndarray]:
    """(layers, module types, matrix (L, T)) of one metric for the pair (i, j); NaN where a layer lacks a type."""
    if metric not in METRICS:
        raise AtlasError(f"unknown overlap metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not table:
        raise IncompatibleAdaptersError("empty overlap table")
    a, b = _index(table, i), _index(table, j)
    cells = {parse_module_name(m): float(getattr(t, metric)[a, b]) for m, t in table.items()}
    layers = sorted({k[0] for k in cells}, key=layer_sort_key)
    types = sorted({k[1] for k in cells})
    matrix = np.full((len(layers), len(types)), np.nan)  # (L, T)
    for (layer, kind), value in cells.items():
        matrix[layers.index(layer), types.index(kind)] = value
    return layers, types, matrix
