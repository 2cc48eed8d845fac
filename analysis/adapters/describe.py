"""A plain-data summary of one adapter: what `inspect --json` prints and the app's inventory shows."""
from __future__ import annotations

from typing import Any

from analysis.adapters.model import Adapter


def describe_adapter(adapter: Adapter) -> dict[str, Any]:
    """JSON-ready description: identity, every module (rank, shape, scale, norm, kind), extras, warnings.

    Norms are computed from the factors (r x r Gram matrices), so describing a large LoRA stays cheap;
    LoHa/LoKr modules are densified once to get theirs.
    """
    modules = []
    for name, delta in adapter.modules.items():
        out, n_in = delta.shape
        modules.append({
            "name": name,
            "rank": int(delta.rank),
            "shape": [int(out), int(n_in)],
            "scale": float(delta.scale),
            "norm": float(delta.frobenius_norm()),
            "kind": delta.kind,
        })
    extras = [{"key": e.key, "kind": e.kind, "shape": list(e.shape), "dtype": e.dtype}
              for e in adapter.extras.values()]
    return {
        "name": adapter.name,
        "format": adapter.format,
        "base_model": adapter.base_model,
        "sha256": adapter.sha256,
        "modules": modules,
        "extras": extras,
        "warnings": list(adapter.warnings),
    }
