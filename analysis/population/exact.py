"""Exact aggregated cosines for many pairs of adapters of one base, from their factors held in memory.

Adapters of one base share a module layout (`sketch._layout`), so every module can be stacked: per module,
B (n, n_out, r_max) with the scale folded in and zero columns padding lower ranks, A (n, r_max, n_in). For
a pair (i, j), <dW_i, dW_j>_F = sum over modules of sum((B_i^T B_j) * (A_i A_j^T)) (trace identity; the
(r, r) Grams, never dW). Dense modules (LoHa, LoKr...) are flattened and enter as plain dot products.
This is the route `families --exact` and the bench use to re-rank sketch candidates where the sketch error
is the size of the signal; it needs the factors of all adapters of the base in memory (`max_bytes`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, LowRankDelta
from analysis.errors import ResourceLimitError

log = logging.getLogger(__name__)

MAX_BYTES = 4 << 30


@dataclass(eq=False)
class StackedFactors:
    """Per module: ("lr", B (n, n_out, r), A (n, r, n_in)) or ("dense", W (n, n_out * n_in)); norms (n,)."""

    modules: list[tuple]
    norms: np.ndarray

    @classmethod
    def of(cls, adapters: Sequence[Adapter], *, max_bytes: int = MAX_BYTES) -> "StackedFactors":
        names = sorted(adapters[0].modules)
        if any(sorted(a.modules) != names for a in adapters):
            raise ValueError("StackedFactors needs adapters of one module layout")
        need = 0
        for m in names:
            d = adapters[0].modules[m]
            r = max(a.modules[m].rank if isinstance(a.modules[m], LowRankDelta) else 0 for a in adapters)
            need += len(adapters) * 4 * (r * (d.shape[0] + d.shape[1]) if r else d.shape[0] * d.shape[1])
        if need > max_bytes:
            raise ResourceLimitError(f"exact cosines of {len(adapters)} adapters need their factors in memory: "
                                     f"{need / 2**30:.1f} GB, over the {max_bytes / 2**30:.1f} GB limit; "
                                     "use the sketches (rescan with a larger --k to reduce their error)")
        modules = []
        for m in names:
            deltas = [a.modules[m] for a in adapters]
            if all(isinstance(d, LowRankDelta) for d in deltas):
                r = max(d.rank for d in deltas)
                n_out, n_in = deltas[0].shape
                b = np.zeros((len(deltas), n_out, r), dtype=np.float32)  # (n, n_out, r)
                a = np.zeros((len(deltas), r, n_in), dtype=np.float32)  # (n, r, n_in)
                for i, d in enumerate(deltas):
                    bi, ai = d.factors(torch.float32)  # scale folded into B
                    b[i, :, :bi.shape[1]] = bi.numpy()
                    a[i, :ai.shape[0]] = ai.numpy()
                modules.append(("lr", b, a))
            else:
                modules.append(("dense", np.stack([d.dense(torch.float32).numpy().ravel() for d in deltas])))
        stacked = cls(modules, np.zeros(len(adapters)))
        idx = np.arange(len(adapters))
        stacked.norms = np.sqrt(np.maximum(stacked.inner(idx, idx), 0.0))
        return stacked

    def inner(self, i: np.ndarray, j: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """(P,) <dW_i, dW_j>_F summed over modules, for index arrays i, j of equal length P."""
        out = np.zeros(len(i), dtype=np.float64)
        for s in range(0, len(i), chunk):
            a_i, a_j = i[s:s + chunk], j[s:s + chunk]
            for kind, *arrays in self.modules:
                if kind == "lr":
                    b, a = arrays
                    gb = np.einsum("por,poq->prq", b[a_i], b[a_j])  # (p, r, r) B_i^T B_j
                    ga = np.einsum("prn,pqn->prq", a[a_i], a[a_j])  # (p, r, r) A_i A_j^T
                    out[s:s + chunk] += (gb * ga).sum(axis=(1, 2))
                else:
                    w = arrays[0]
                    out[s:s + chunk] += np.einsum("pd,pd->p", w[a_i], w[a_j])
        return out

    def cosine(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """(P,) exact aggregated cosines of the pairs (0 where a norm is 0)."""
        den = self.norms[i] * self.norms[j]
        return np.divide(self.inner(i, j), den, out=np.zeros(len(i)), where=den > 0)
