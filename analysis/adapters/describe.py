"""A plain-data summary of one adapter: what `inspect --json` prints and the app's inventory shows."""
from __future__ import annotations

import math
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


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so `json.dumps(..., allow_nan=False)` works.

    Python's json writes bare `NaN` / `Infinity`, which is not JSON: strict parsers (browsers, jq,
    `json.loads(..., parse_constant=...)`) refuse the whole document. null is what JSON.stringify writes.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
