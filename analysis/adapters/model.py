"""The one factored model every adapter format is read into.

A module delta is either a `LowRankDelta` (dW = scale * B @ A, kept factored) or a `DenseDelta`
(LoHa/LoKr and anything else that is not low rank). Both speak the same small protocol:
`shape`, `rank`, `dense()`, `frobenius_norm()`, so overlap and merge code never asks which format an
adapter came from. All deltas are in (out, in) layout; conv kernels are flattened to
(out, in * kh * kw) and their kernel shape is kept for export.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import torch


def _finite_number(x: Any) -> bool:
    try:
        return not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError, RuntimeError):
        return False


def check_factors(A: torch.Tensor, B: torch.Tensor, scale: float, *, where: str = "LowRankDelta") -> None:
    """A (r, n_in) and B (n_out, r): 2-D tensors with the same r, and a finite scale; else `ValueError`.

    `ValueError` (not an `AtlasError`) because a malformed delta is a bug of whoever built it; the
    loaders check their files first and raise `AdapterFormatError` naming the file and tensor."""
    problem = None
    if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor):
        problem = f"A and B must be torch tensors, got {type(A).__name__} and {type(B).__name__}"
    elif A.dim() != 2 or B.dim() != 2:
        problem = f"A (r, n_in) and B (n_out, r) must be 2-D, got A {tuple(A.shape)} and B {tuple(B.shape)}"
    elif A.shape[0] != B.shape[1]:
        problem = f"A {tuple(A.shape)} has rank {A.shape[0]} but B {tuple(B.shape)} has rank {B.shape[1]}"
    elif not _finite_number(scale):
        problem = f"scale must be a finite number, got {scale!r}"
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


@dataclass(frozen=True, eq=False)
class LowRankDelta:
    """dW = scale * B @ A in (out, in) layout, never densified unless `dense()` is called.

    `fan_in_fan_out` records that the base weight is stored (in, out) (GPT-2 Conv1D): it matters
    only when the delta is added to that weight; the factors here are always (out, in).
    `kernel_shape` is (kh, kw) for a conv LoRA whose A was flattened from (r, in, kh, kw).
    """

    A: torch.Tensor  # (r, n_in)
    B: torch.Tensor  # (n_out, r)
    scale: float
    kernel_shape: tuple[int, ...] | None = None
    fan_in_fan_out: bool = False
    kind: str = "linear"  # linear | conv | embedding

    def __post_init__(self) -> None:
        """Refuse malformed factors here, with one line, rather than a shape error deep inside a merge."""
        check_factors(self.A, self.B, self.scale)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.B.shape[0]), int(self.A.shape[1]))

    def factors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """(B * scale, A) in `dtype`: the scale folded into B, the usual input of the factored math."""
        return self.B.to(dtype) * self.scale, self.A.to(dtype)  # (n_out, r), (r, n_in)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The scaled update as a dense (out, in) tensor. Costs n_out * n_in memory: ask only when needed."""
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scale  # (n_out, n_in)

    def frobenius_norm(self) -> float:
        """||scale * B A||_F from the r x r Gram matrices, without forming dW."""
        b, a = self.B.double(), self.A.double()
        gb = b.T @ b  # (r, r)
        ga = a @ a.T  # (r, r)
        return abs(self.scale) * math.sqrt(max(float((gb * ga).sum()), 0.0))


@dataclass(frozen=True, eq=False)
class DenseDelta:
    """A full update W (out, in): LoHa, LoKr, full fine-tuned layers."""

    W: torch.Tensor  # (n_out, n_in)
    kernel_shape: tuple[int, ...] | None = None
    fan_in_fan_out: bool = False
    kind: str = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.W, torch.Tensor) or self.W.dim() != 2:
            shape = tuple(self.W.shape) if isinstance(self.W, torch.Tensor) else type(self.W).__name__
            raise ValueError(f"DenseDelta: W must be a 2-D (n_out, n_in) tensor, got {shape}")

    @property
    def rank(self) -> int:
        return int(min(self.W.shape))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.W.shape[0]), int(self.W.shape[1]))

    @property
    def scale(self) -> float:
        return 1.0

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.W.to(dtype)  # (n_out, n_in)

    def frobenius_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.W.double()))


Delta = Union[LowRankDelta, DenseDelta]


@dataclass(frozen=True)
class ExtraTensor:
    """A tensor that is not a LoRA pair: modules_to_save, DoRA magnitude, embeddings, biases.

    Kept and reported, never merged as LoRA. `kind` says what it is ("modules_to_save",
    "dora_magnitude", "bias", "embedding", "other").
    """

    key: str
    kind: str
    shape: tuple[int, ...]
    dtype: str


def sha256_of_files(paths: list[Path]) -> str:
    """Content hash of an adapter: its files in name order, each prefixed by its name."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(eq=False)
class Adapter:
    """One adapter, whatever its source format, keyed by canonical module names.

    `modules` maps canonical module names (the model's own module paths for LLMs, diffusers module
    paths for SD: `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, text encoders
    prefixed `text_encoder.`) to deltas, so adapters of one base line up whatever their format.
    """

    name: str
    path: Path
    format: str  # peft | diffusers | diffusers-old | kohya | lycoris | delta
    base_model: str | None
    config: Mapping[str, Any]
    modules: dict[str, Delta]
    files: list[Path] = field(default_factory=list)
    extras: dict[str, ExtraTensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _sha256: str | None = None

    @cached_property
    def sha256(self) -> str:
        return self._sha256 or sha256_of_files(self.files)

    def module_names(self) -> list[str]:
        return sorted(self.modules)

    def total_norm(self) -> float:
        return math.sqrt(sum(d.frobenius_norm() ** 2 for d in self.modules.values()))




def adapter_list(inputs: "Iterable[Adapter] | Any") -> list[Adapter]:
    """The library's one input type, read the same way by every job: an `AdapterSet` (anything holding its
    adapters as `.adapters`) or a list of loaded `Adapter`s. Anything else is a TypeError naming it."""
    items = list(getattr(inputs, "adapters", inputs))
    bad = next((x for x in items if not isinstance(x, Adapter)), None)
    if bad is not None:
        raise TypeError(f"expected an AdapterSet or a list of Adapters (load_adapter), got an item of type "
                        f"{type(bad).__name__}; paths: AdapterSet.from_paths(paths)")
    return items
