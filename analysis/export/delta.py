"""Write a merged adapter as full per-module updates: `<module>.delta` -> dW (n_out, n_in) in the export dtype.

The one format that holds any merge result exactly (dense ones included), for users who add dW to
the base weights themselves; conv updates keep their flattened (out, in*kh*kw) layout, and the
kernel shapes and Conv1D flags are recorded in the header metadata.
"""
from __future__ import annotations

import json
from typing import Mapping

import torch

from analysis.adapters.model import Delta

DELTA_SUFFIX = ".delta"


def delta_files(modules: Mapping[str, Delta], dtype: torch.dtype = torch.float32
                ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """(tensors, extra text files, extra safetensors metadata)."""
    tensors = {f"{name}{DELTA_SUFFIX}": d.dense(torch.float32).to(dtype).contiguous()
               for name, d in sorted(modules.items())}
    layout = {name: {"kernel_shape": list(d.kernel_shape) if d.kernel_shape else None,
                     "fan_in_fan_out": d.fan_in_fan_out, "kind": d.kind} for name, d in sorted(modules.items())}
    return tensors, {}, {"atlas_format": "delta", "atlas_layout": json.dumps(layout, sort_keys=True)}
