"""LyCORIS LoHa and LoKr modules as dense deltas, built only when first used.

Formulas and scales follow LyCORIS itself (KohakuBlueleaf/LyCORIS, lycoris/functional/loha.py,
lycoris/functional/lokr.py and the `make_module_from_state_dict` of lycoris/modules/{loha,lokr}.py):
- LoHa: dW = (alpha / dim) * (w1_a @ w1_b) * (w2_a @ w2_b), dim = hada_w1_b.shape[0]; with Tucker
  cores the factors are rebuilt as einsum("i j ..., j r, i p -> p r ...", t, w_b, w_a).
- LoKr: dW = (alpha / dim) * kron(w1, w2), w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, w2 likewise (Tucker
  via lokr_t2). The dim of the scale is lokr_w1_a.shape[1] when w1 is factored, else
  lokr_w2_a.shape[1]; when neither is factored LyCORIS forces alpha = dim, i.e. scale 1.
Conv kernels come out flattened to (out, in*kh*kw): kron of a (a, b) block with a (c, d*kh*kw) one
is already the row-major flattening of the (a*c, b*d, kh, kw) kernel, so no reshuffle is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from analysis.adapters.limits import check_dense_budget
from analysis.adapters.model import DenseDelta
from analysis.adapters.safetensors_io import TensorSource
from analysis.adapters.scaling import lora_scale
from analysis.errors import AdapterFormatError

LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")
_CONV3X3_NAMES = ("conv", "conv1", "conv2", "conv_in", "conv_out")


class LazyDenseDelta(DenseDelta):
    """A `DenseDelta` whose W is computed from its factors on first access, then cached.

    Loading stays cheap (no product formed; its size checked against the dense budget) while
    everything downstream sees an ordinary DenseDelta; `shape` and `rank` come from the header.
    """

    def __init__(self, W: torch.Tensor | None = None, kernel_shape: tuple[int, ...] | None = None,
                 fan_in_fan_out: bool = False, kind: str = "linear", *,
                 build: Callable[[], torch.Tensor] | None = None, shape: tuple[int, int] | None = None) -> None:
        if (W is None) == (build is None):
            raise ValueError("give exactly one of W or build")
        object.__setattr__(self, "_W", W)
        object.__setattr__(self, "_build", build)
        object.__setattr__(self, "_shape", tuple(W.shape) if W is not None else shape)
        object.__setattr__(self, "kernel_shape", kernel_shape)
        object.__setattr__(self, "fan_in_fan_out", fan_in_fan_out)
        object.__setattr__(self, "kind", kind)

    @property
    def W(self) -> torch.Tensor:  # type: ignore[override]
        if self._W is None:
            object.__setattr__(self, "_W", self._build())  # (n_out, n_in)
        return self._W

    @property
    def built(self) -> bool:
        return self._W is not None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self._shape[0]), int(self._shape[1]))

    @property
    def rank(self) -> int:
        return int(min(self.shape))


@dataclass(frozen=True)
class LycorisModule:
    """Header-level view of one LoHa/LoKr module: which tensors it has and its alpha."""

    name: str  # the kohya module name, for messages
    keys: dict[str, str]  # suffix (hada_w1_a, lokr_w2, ...) -> full tensor key
    alpha: float | None


def _t(src: TensorSource, m: LycorisModule, suffix: str) -> torch.Tensor:
    return src.get(m.keys[suffix]).double()


def _shape(src: TensorSource, m: LycorisModule, suffix: str) -> tuple[int, ...] | None:
    return src.shape(m.keys[suffix]) if suffix in m.keys else None


def _tucker(t: torch.Tensor, w_b: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
    return torch.einsum("i j ..., j r, i p -> p r ...", t, w_b, w_a)  # (out, in, *k)


def _require(path: Path, m: LycorisModule, suffixes: tuple[str, ...]) -> None:
    for s in suffixes:
        if s not in m.keys:
            have = next(iter(m.keys.values()))
            raise AdapterFormatError(f"{path}: tensor '{have}': module '{m.name}' lacks '{m.name}.{s}'")


def check_factor_dims(src: TensorSource, m: LycorisModule) -> None:
    """Every LoHa/LoKr factor and Tucker core is at least 2-d (a 0-d/1-d one is a corrupt file)."""
    for key in m.keys.values():
        if len(src.shape(key)) < 2:
            raise AdapterFormatError(f"{src.path}: tensor '{key}': shape {list(src.shape(key))} is not a "
                                     "LyCORIS factor (expected at least 2 dimensions)")


def _budgeted(src: TensorSource, m: LycorisModule, out: int, width: int,
              build: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Check the dense size now (load time, from the header) and the values when built."""
    what = f"{src.path}: module '{m.name}'"
    check_dense_budget((out, width), torch.float64, what)  # the float64 intermediates of `build`

    def checked() -> torch.Tensor:
        W = build()  # (out, width)
        if not bool(torch.isfinite(W).all()):
            raise AdapterFormatError(f"{what}: the dense update overflows float32 (NaN/Inf after building it)")
        return W

    return checked


def _kernel_for(canonical: str, width: int) -> tuple[int, ...] | None:
    """Kernel shape of a flattened conv delta when the file does not say (old LyCORIS flattens
    conv weights to 2-D): SD UNet convs named conv/conv1/conv2/conv_in/conv_out are 3x3."""
    last = canonical.rsplit(".", 1)[-1]
    if last in _CONV3X3_NAMES and width % 9 == 0:
        return (3, 3)
    return None


def loha_delta(src: TensorSource, m: LycorisModule, canonical: str) -> LazyDenseDelta:
    """LoHa module -> lazy dense delta (see module docstring for the formula)."""
    path = src.path
    _require(path, m, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    check_factor_dims(src, m)
    tucker = "hada_t1" in m.keys
    w1a, w1b = _shape(src, m, "hada_w1_a"), _shape(src, m, "hada_w1_b")
    w2a, w2b = _shape(src, m, "hada_w2_a"), _shape(src, m, "hada_w2_b")
    dim = int(w1b[0])
    if dim == 0:
        raise AdapterFormatError(f"{path}: tensor '{m.keys['hada_w1_b']}': rank r = 0")
    if tucker:
        _require(path, m, ("hada_t2",))
        t1 = _shape(src, m, "hada_t1")
        out, n_in, kernel = w1a[1], w1b[1], tuple(t1[2:])
        t2 = _shape(src, m, "hada_t2")
        ok = w1a[0] == dim and t1[:2] == (dim, dim) and w2a == w1a and w2b == w1b and t2 == t1 and len(w1b) == 2
    else:
        out, n_in, kernel = w1a[0], w1b[1], tuple(w1b[2:])
        ok = w1a[1] == dim and w2a[0] == out and w2b[1:] == w1b[1:] and w2a[1] == w2b[0]
    ok = ok and len(w1a) == 2 and len(w2a) == 2
    if not ok:
        raise AdapterFormatError(f"{path}: tensor '{m.keys['hada_w2_a']}': LoHa factors of '{m.name}' have "
                                 f"inconsistent shapes w1_a {list(w1a)}, w1_b {list(w1b)}, w2_a {list(w2a)}, "
                                 f"w2_b {list(w2b)}")
    scale = lora_scale(dim, m.alpha)
    width = n_in * math.prod(kernel)

    def build() -> torch.Tensor:
        if tucker:
            p1 = _tucker(_t(src, m, "hada_t1"), _t(src, m, "hada_w1_b"), _t(src, m, "hada_w1_a"))  # (out, in, *k)
            p2 = _tucker(_t(src, m, "hada_t2"), _t(src, m, "hada_w2_b"), _t(src, m, "hada_w2_a"))  # (out, in, *k)
        else:
            p1 = _t(src, m, "hada_w1_a") @ _t(src, m, "hada_w1_b").reshape(dim, -1)  # (out, in*k)
            p2 = _t(src, m, "hada_w2_a") @ _t(src, m, "hada_w2_b").reshape(w2a[1], -1)  # (out, in*k)
        return ((p1 * p2) * scale).reshape(out, -1).float()  # (out, in*kh*kw)

    kernel_shape = kernel or _kernel_for(canonical, width)
    kind = "conv" if kernel_shape else "linear"
    return LazyDenseDelta(build=_budgeted(src, m, out, width, build), shape=(out, width),
                          kernel_shape=kernel_shape or None, kind=kind)


def _lokr_factor_shape(src: TensorSource, m: LycorisModule, which: str) -> tuple[int, int, tuple[int, ...]]:
    """(rows, cols, kernel) of w1 or w2 from whichever of full / factored / Tucker tensors exist."""
    full = _shape(src, m, f"lokr_{which}")
    if full is not None:
        return full[0], math.prod(full[1:]), tuple(full[2:])
    a, b = _shape(src, m, f"lokr_{which}_a"), _shape(src, m, f"lokr_{which}_b")
    if a is None or b is None:
        present = next(iter(m.keys.values()))
        raise AdapterFormatError(f"{src.path}: tensor '{present}': LoKr module '{m.name}' needs lokr_{which} "
                                 f"or both lokr_{which}_a and lokr_{which}_b")
    t = _shape(src, m, f"lokr_t{which[-1]}")
    if t is not None:  # Tucker: a (i, rows), b (j, cols), t (i, j, *k)
        if len(a) != 2 or len(b) != 2 or t[:2] != (a[0], b[0]):
            raise AdapterFormatError(f"{src.path}: tensor '{m.keys[f'lokr_t{which[-1]}']}': Tucker core {list(t)} "
                                     f"does not match lokr_{which}_a {list(a)} and lokr_{which}_b {list(b)}")
        return a[1], b[1] * math.prod(t[2:]), tuple(t[2:])
    if a[1] != b[0] or len(a) != 2:
        raise AdapterFormatError(f"{src.path}: tensor '{m.keys[f'lokr_{which}_b']}': shape {list(b)} does not "
                                 f"match lokr_{which}_a {list(a)}")
    return a[0], math.prod(b[1:]), tuple(b[2:])


def _lokr_factor(src: TensorSource, m: LycorisModule, which: str) -> torch.Tensor:
    if f"lokr_{which}" in m.keys:
        w = _t(src, m, f"lokr_{which}")
        return w.reshape(w.shape[0], -1)  # (rows, cols*k)
    a, b = _t(src, m, f"lokr_{which}_a"), _t(src, m, f"lokr_{which}_b")
    t_key = f"lokr_t{which[-1]}"
    if t_key in m.keys:
        w = _tucker(_t(src, m, t_key), b, a)  # (rows, cols, *k)
        return w.reshape(w.shape[0], -1)
    return a @ b.reshape(b.shape[0], -1)  # (rows, cols*k)


def lokr_delta(src: TensorSource, m: LycorisModule, canonical: str) -> LazyDenseDelta:
    """LoKr module -> lazy dense delta (see module docstring for the formula and the scale's dim)."""
    check_factor_dims(src, m)
    r1, c1, _k1 = _lokr_factor_shape(src, m, "w1")
    r2, c2, k2 = _lokr_factor_shape(src, m, "w2")
    if "lokr_w1_a" in m.keys:
        dim = int(src.shape(m.keys["lokr_w1_a"])[1])
    elif "lokr_w2_a" in m.keys:
        dim = int(src.shape(m.keys["lokr_w2_a"])[1])
    else:
        dim = 0  # both factors full: LyCORIS uses scale 1
    if dim == 0 and ("lokr_w1_a" in m.keys or "lokr_w2_a" in m.keys):
        raise AdapterFormatError(f"{src.path}: tensor '{next(iter(m.keys.values()))}': rank r = 0")
    scale = lora_scale(dim, m.alpha) if dim else 1.0
    out, width = r1 * r2, c1 * c2

    def build() -> torch.Tensor:
        w1 = _lokr_factor(src, m, "w1")  # (r1, c1)
        w2 = _lokr_factor(src, m, "w2")  # (r2, c2)
        return (torch.kron(w1, w2) * scale).float()  # (r1*r2, c1*c2)

    kernel = k2 or _kernel_for(canonical, width)
    kind = "conv" if kernel else "linear"
    return LazyDenseDelta(build=_budgeted(src, m, out, width, build), shape=(out, width),
                          kernel_shape=kernel or None, kind=kind)
