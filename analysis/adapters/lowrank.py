"""Turning a (down, up) tensor pair into a `LowRankDelta`, after checking the shapes agree.

Every LoRA-like format (PEFT, diffusers, kohya) stores dW = scale * up @ down with the same shape
rules, so the checks live here once:
- linear:    down (r, in),            up (out, r)
- conv:      down (r, in, kh, kw),    up (out, r, 1, 1)  -> flattened to (r, in*kh*kw), (out, r)
- embedding: PEFT's lora_embedding_A (r, num_emb), lora_embedding_B (dim, r); PEFT's delta is
  (B @ A).T with shape (num_emb, dim), so the factors are stored transposed: A' = B.T, B' = A.T.
Only shapes from the file header are used; the tensors are views of the bytes read at open (no copies).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from analysis.adapters.model import LowRankDelta
from analysis.adapters.safetensors_io import TensorSource
from analysis.errors import AdapterFormatError


def add_half(path: Path, halves: dict[str, dict[str, str]], module: str, role: str, key: str) -> None:
    """Record `key` as the `role` factor of `module`, refusing a second tensor for the same slot.

    Several spellings normalise to one module (`base_model.model.x.lora_A.weight` and
    `x.lora_A.weight`, `.processor.to_out_lora` and `.to_out_lora`); keeping "the last one" would
    silently drop the other, so both keys are named instead.
    """
    found = halves.setdefault(module, {})
    if role in found and found[role] != key:
        raise AdapterFormatError(f"{path}: tensors '{found[role]}' and '{key}' are both the {role} factor of "
                                 f"module '{module}': the module is stored twice")
    found[role] = key


def complete_pairs(path: Path, halves: Mapping[str, Mapping[str, str]],
                   roles: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """{module: (down_key, up_key)}, refusing any module that has only one of the two tensors."""
    down_role, up_role = roles
    pairs: dict[str, tuple[str, str]] = {}
    for module, found in halves.items():
        if down_role not in found or up_role not in found:
            have_role = down_role if down_role in found else up_role
            missing = up_role if have_role == down_role else down_role
            raise AdapterFormatError(f"{path}: tensor '{found[have_role]}' has no matching {missing} "
                                     f"tensor for module '{module}'")
        pairs[module] = (found[down_role], found[up_role])
    return pairs


def pair_rank(src: TensorSource, down_key: str, up_key: str, *, embedding: bool = False) -> int:
    """Rank of a (down, up) pair, or one-line error naming the tensor whose shape is inconsistent."""
    a, b = src.shape(down_key), src.shape(up_key)
    path = src.path
    if len(a) < 2 or len(b) < 2:
        bad = down_key if len(a) < 2 else up_key
        raise AdapterFormatError(f"{path}: tensor '{bad}': shape {list(src.shape(bad))} is not a LoRA factor "
                                 "(expected at least 2 dimensions)")
    if embedding:
        if len(a) != 2 or len(b) != 2 or b[1] != a[0]:
            raise AdapterFormatError(f"{path}: tensor '{up_key}': shape {list(b)} does not match "
                                     f"'{down_key}' {list(a)} (expected embedding B (dim, {a[0]}))")
        r = a[0]
    else:
        r = a[0]
        if b[1] != r:
            raise AdapterFormatError(f"{path}: tensor '{up_key}': shape {list(b)} does not match '{down_key}' "
                                     f"{list(a)} (expected up (out, {r}) for down ({r}, in))")
        if len(b) != len(a) and not (len(a) > 2 and len(b) == 2):
            raise AdapterFormatError(f"{path}: tensor '{up_key}': {len(b)}-d up factor does not match "
                                     f"{len(a)}-d '{down_key}' {list(a)}")
        if any(d != 1 for d in b[2:]):
            raise AdapterFormatError(f"{path}: tensor '{up_key}': conv up factor {list(b)} must have a 1x1 "
                                     "kernel (out, r, 1, 1)")
    if r == 0:
        raise AdapterFormatError(f"{path}: tensor '{down_key}': rank r = 0 (shape {list(a)}): an empty LoRA")
    return int(r)


def make_lowrank(src: TensorSource, down_key: str, up_key: str, scale: float, *,
                 embedding: bool = False, fan_in_fan_out: bool = False) -> LowRankDelta:
    """The `LowRankDelta` of a pair already checked by `pair_rank` (views, no copies)."""
    down, up = src.get(down_key), src.get(up_key)
    if embedding:
        return LowRankDelta(A=up.T, B=down.T, scale=scale, kind="embedding")  # (r, dim), (num_emb, r)
    if down.dim() > 2:
        kernel = tuple(int(k) for k in down.shape[2:])
        A = down.reshape(down.shape[0], -1)  # (r, in*kh*kw)
        B = up.reshape(up.shape[0], up.shape[1])  # (out, r)
        return LowRankDelta(A=A, B=B, scale=scale, kernel_shape=kernel, fan_in_fan_out=fan_in_fan_out, kind="conv")
    return LowRankDelta(A=down, B=up, scale=scale, fan_in_fan_out=fan_in_fan_out)  # (r, in), (out, r)
