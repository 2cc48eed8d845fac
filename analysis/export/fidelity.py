"""Fidelity of the file as its readers compute it: the relative Frobenius error between the update a reader
builds from the stored tensors (in the export dtype, with the file's own scaling) and the update the
export intends (the merge at the export rank, float64), per module and pooled over modules.

This is the storage part of the export error: the truncation part (rank R vs the exact merge) comes from
the merge's spectrum (`analysis.workflow.rank`). The two add up to at most their sum. Computed from the
factors (r x r Gram matrices, or the products where those are cheaper), densely for the delta format.

Readers, per format: PEFT and diffusers apply lora_B @ lora_A * lora_alpha / r with alpha = r (scale 1);
kohya applies lora_up @ lora_down * alpha / rank with the module's `.alpha`; delta adds the stored dW.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from analysis.adapters.model import Delta
from analysis.export.kohya import has_second_encoder, kohya_key
from analysis.export.layout import module_factors
from analysis.export.peft import PEFT_PREFIX
from analysis.export.sd import denoiser_of, split_component


def _keys(fmt: str, name: str, denoiser: str, two_encoders: bool) -> tuple[str, str, str | None]:
    """(down key, up key, alpha key or None) of module `name` in a `fmt` file."""
    if fmt == "kohya":
        key = kohya_key(name, two_encoders)
        return f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"
    if fmt == "diffusers":
        component, inner = split_component(name, denoiser=denoiser)
        return f"{component}.{inner}.lora_A.weight", f"{component}.{inner}.lora_B.weight", None
    return f"{PEFT_PREFIX}{name}.lora_A.weight", f"{PEFT_PREFIX}{name}.lora_B.weight", None


def _errors2(up_w: torch.Tensor, down_w: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[float, float]:
    """(||up_w @ down_w - up @ down||_F^2, ||up @ down||_F^2) in float64, by the cheaper exact route: Gram
    matrices of the stacked factors, O((n_out + n_in) r^2), or the two products, O(n_out n_in r), which wins
    once r is a sizeable share of the module width (a full-rank export of a dense merge)."""
    n_out, n_in, r = up.shape[0], down.shape[1], down.shape[0] + down_w.shape[0]
    if n_out * n_in <= (n_out + n_in) * r:
        want = up @ down  # (n_out, n_in)
        return float(((up_w @ down_w - want) ** 2).sum()), float((want**2).sum())
    Bs = torch.cat([up_w, -up], dim=1)  # (n_out, r_w + r)
    As = torch.cat([down_w, down], dim=0)  # (r_w + r, n_in)
    n2 = float(((up.T @ up) * (down @ down.T)).sum())
    return max(float(((Bs.T @ Bs) * (As @ As.T)).sum()), 0.0), max(n2, 0.0)


def storage_fidelity(modules: Mapping[str, Delta], stored: Mapping[str, torch.Tensor], *, fmt: str,
                     rank: int | None, dtype_name: str) -> dict[str, Any]:
    """{dtype, storage_error, worst_storage_module, worst_storage_error, wider_than_dense} of the `stored`
    tensors of a `fmt` export of `modules` at `rank` (the file's tensors, in its dtype), each module read with
    its reader's scaling and compared with the update intended (the module's float64 factors at `rank`,
    formed one module at a time). `wider_than_dense`: modules whose factors hold more numbers than their
    dense dW (r (n_out + n_in) > n_out n_in): at such ranks a LoRA file is larger than `--format delta`."""
    err2 = tot2 = 0.0
    wider = 0
    worst, worst_err = None, 0.0
    denoiser = denoiser_of(list(modules)) if fmt == "diffusers" else "unet"
    two_encoders = has_second_encoder(modules)
    for name in sorted(modules):
        if fmt == "delta":
            ref = modules[name].dense(torch.float64)  # (n_out, n_in)
            e2 = float(((stored[f"{name}.delta"].double() - ref) ** 2).sum())
            n2 = float((ref**2).sum())
        else:
            f = module_factors(name, modules[name], rank, target=fmt)  # up @ down = the intended dW
            dk, uk, ak = _keys(fmt, name, denoiser, two_encoders)
            down = stored[dk].double().reshape(stored[dk].shape[0], -1)  # (r, n_in)
            up = stored[uk].double().reshape(stored[uk].shape[0], -1)  # (n_out, r)
            if ak is not None:  # kohya: the reader's alpha / rank
                up = up * (float(stored[ak]) / down.shape[0])
            e2, n2 = _errors2(up, down, f.up, f.down)
            wider += int(down.shape[0] * (up.shape[0] + down.shape[1]) > up.shape[0] * down.shape[1])
        module_err = math.sqrt(e2 / n2) if n2 > 0 else 0.0
        if worst is None or module_err > worst_err:
            worst, worst_err = name, module_err
        err2, tot2 = err2 + e2, tot2 + n2
    return {"dtype": dtype_name, "storage_error": math.sqrt(err2 / tot2) if tot2 > 0 else 0.0,
            "worst_storage_module": worst, "worst_storage_error": worst_err, "wider_than_dense": wider}
