"""`load_adapter`: one entry point that recognises the format of a directory or a weights file.

Recognised, by the tensor names themselves (never by file order or shapes), through the registry of
`analysis.adapters.formats` (peft, diffusers, diffusers-old, kohya incl. LyCORIS LoHa/LoKr); an
adapter_config.json next to the weights means PEFT.
Each file is read once into memory (regular files only, size-bounded: `limits.py`); the adapter's
sha256 is computed from those same bytes and the tensors are views of them, so the hash always names
the numbers in use. Every tensor is then scanned once: NaN/Inf anywhere is refused naming the tensor,
and a module whose |dW| entries could overflow float32 arithmetic is refused naming the module.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from pathlib import Path
from typing import Mapping

import torch

from analysis.adapters import formats
from analysis.adapters.limits import MAX_CONFIG_BYTES, is_regular_file, read_regular_file
from analysis.adapters.model import Adapter, LowRankDelta
from analysis.adapters.parsed import Parsed
from analysis.adapters.peft_format import load_peft, parse_config_json
from analysis.adapters.safe_text import plain_text
from analysis.adapters.safetensors_io import TensorSource, open_weights, scan_values
from analysis.errors import AdapterFormatError, AtlasError

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


#: Longest error message (characters): a hostile path or key must not yield a page-long line.
MAX_MESSAGE = 1000
#: Largest |dW| entry bound accepted (|scale| * r * max|B| * max|A|): downstream math runs in float32.
MAX_DELTA_ENTRY = 1e30


def load_adapter(path: str | os.PathLike[str], *, name: str | None = None, check_finite: bool = True) -> Adapter:
    """Read an adapter directory or weights file into the factored `Adapter` model.

    Raises `AdapterFormatError` (one line naming the file, the tensor and the reason) for anything
    that is not a readable adapter, including NaN/Inf values in any tensor; `ResourceLimitError` for
    files or modules over the stated size limits. `check_finite=False` skips the value scan (for
    callers that have just written the file themselves); it never turns a refusal into a warning.
    Messages are one display line whatever the file names hold (newlines, escapes: see `safe_text`).
    """
    try:
        return _load(Path(path), name, check_finite)
    except AtlasError as exc:
        text = str(exc)
        if text == plain_text(text, MAX_MESSAGE):
            raise
        raise type(exc)(plain_text(text, MAX_MESSAGE)) from None


def _load(p: Path, name: str | None, check_finite: bool) -> Adapter:
    try:
        is_dir = stat.S_ISDIR(os.stat(p).st_mode)
    except FileNotFoundError:
        raise AdapterFormatError(f"{plain_text(p)}: no such file or directory") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise AdapterFormatError(f"{plain_text(p)}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if is_dir:
        weights, config_path = _resolve_dir(p)
        default_name = p.name
    else:
        weights = p
        sibling = p.parent / CONFIG_NAME
        config_path = sibling if p.name in PEFT_WEIGHTS and os.path.lexists(sibling) else None
        default_name = p.parent.name if config_path else p.stem
    blobs = {weights.name: read_regular_file(weights, "weights file")}
    config = None
    if config_path is not None:
        blobs[config_path.name] = read_regular_file(config_path, "adapter config", limit=MAX_CONFIG_BYTES)
        config = parse_config_json(config_path, blobs[config_path.name])
    sha256 = sha256_of_blobs(blobs)
    src = open_weights(weights, blobs[weights.name])
    if check_finite:
        _refuse_nonfinite(src)
    parsed = _parse(src, config, config_path)
    if not parsed.modules:
        raise AdapterFormatError(f"{weights}: no LoRA modules found (only {len(parsed.extras)} other tensors)")
    if check_finite:
        _refuse_overflow(weights, parsed)
    for w in parsed.warnings:
        log.warning(w)
    files = [weights] + ([config_path] if config_path else [])
    return Adapter(name=name or default_name, path=p, format=parsed.format, base_model=parsed.base_model,
                   config=parsed.config, modules=dict(sorted(parsed.modules.items())), files=files,
                   extras=parsed.extras, warnings=parsed.warnings, _sha256=sha256)


def sha256_of_blobs(blobs: Mapping[str, bytes | bytearray]) -> str:
    """The same hash as `model.sha256_of_files`, from contents already in memory ({file name: bytes}).

    `load_adapter` hashes the very bytes its tensors are built from, so the hash names the numbers.
    """
    h = hashlib.sha256()
    for name in sorted(blobs):
        h.update(name.encode() + b"\0")
        h.update(blobs[name])
    return h.hexdigest()


def _refuse_nonfinite(src: TensorSource) -> None:
    """NaN/Inf in any tensor (factor, alpha, extra) makes every later number meaningless: refuse."""
    for key, (bad, _peak) in scan_values(src, src.keys()).items():
        if bad:
            raise AdapterFormatError(f"{src.path}: tensor '{key}' has {bad} NaN/Inf values")


def _refuse_overflow(path: Path, parsed: Parsed) -> None:
    """A finite module whose product can overflow float32 (|dW| bound over MAX_DELTA_ENTRY) is refused."""
    for name, d in parsed.modules.items():
        if not isinstance(d, LowRankDelta) or d.A.numel() == 0 or d.B.numel() == 0:
            continue
        bound = abs(d.scale) * d.rank * _peak(d.A) * _peak(d.B)
        if not math.isfinite(d.scale) or not bound <= MAX_DELTA_ENTRY:
            raise AdapterFormatError(f"{path}: module '{name}': |dW| entries could reach {bound:.3g} (scale "
                                     f"{d.scale:.3g}, rank {d.rank}), over {MAX_DELTA_ENTRY:g}: float32 math "
                                     "on it would overflow")


def _peak(t: torch.Tensor) -> float:
    lo, hi = torch.aminmax(t)  # one fast pass, no |t| temporary
    return max(-float(lo), float(hi))


def _resolve_dir(p: Path) -> tuple[Path, Path | None]:
    """(weights file, adapter_config.json or None) of an adapter directory.

    Presence is decided with `lexists` (a FIFO or a directory named like a weights file still counts,
    and is then refused by `read_regular_file` with what it is), never by opening anything.
    """
    config = p / CONFIG_NAME
    peft_weights = [p / w for w in PEFT_WEIGHTS if os.path.lexists(p / w)]
    if os.path.lexists(config):
        if not peft_weights:
            raise AdapterFormatError(f"{p}: has {CONFIG_NAME} but no {' or '.join(PEFT_WEIGHTS)}")
        return peft_weights[0], config  # safetensors preferred over the pickle
    if peft_weights:
        raise AdapterFormatError(f"{config}: missing adapter config next to {peft_weights[0].name}")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in WEIGHT_SUFFIXES and is_regular_file(f))
    by_stem: dict[str, Path] = {}
    for f in files:  # the same weights saved twice (.safetensors and .bin): take the safetensors
        if f.stem not in by_stem or f.suffix == ".safetensors":
            by_stem[f.stem] = f
    if not by_stem:
        subs = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.is_symlink()
                      and (os.path.lexists(d / CONFIG_NAME) or any(os.path.lexists(d / w) for w in PEFT_WEIGHTS)))
        if subs:
            raise AdapterFormatError(f"{p}: holds several adapters in subfolders ({', '.join(subs)}): pass one folder")
        raise AdapterFormatError(f"{p}: no adapter files; recognised formats: {formats.recognised()}")
    if len(by_stem) > 1:
        if not any(detect_format(open_weights(f).keys()) != "unknown" for f in by_stem.values()):
            raise AdapterFormatError(f"{p}: no file here is in a recognised adapter format; recognised formats: "
                                     f"{formats.recognised()}")
        names = ", ".join(f.name for f in by_stem.values())
        raise AdapterFormatError(f"{p}: holds several adapters ({names}): pass one file")
    return next(iter(by_stem.values())), None


def detect_format(keys: list[str]) -> str:
    """Format name from the tensor names alone (`analysis.adapters.formats`), or "unknown"."""
    fmt = formats.detect(keys)
    return fmt.name if fmt is not None else "unknown"


def _parse(src: TensorSource, config: dict | None, config_path: Path | None) -> Parsed:
    if config is not None:
        return load_peft(src, config, config_path)
    fmt = formats.detect(src.keys())
    if fmt is not None:
        return fmt.parse(src)
    if src.metadata.get("atlas_format") == "delta":
        raise AdapterFormatError(f"{src.path}: is an Adapter Atlas full-delta export (`merge --format delta`: dense "
                                 "dW per module, to add to the base weights yourself), not a LoRA adapter, so it "
                                 "cannot be read back; to get an adapter, run the merge again with `--format peft` "
                                 "(its recipe.yaml next to it names the inputs, method and parameters)")
    first = ", ".join(repr(k) for k in sorted(src.keys())[:2]) or "no tensors"
    raise AdapterFormatError(f"{src.path}: not a recognised adapter format (keys like {first}); "
                             f"recognised formats: {formats.recognised()}")


__all__ = ["load_adapter", "detect_format"]
