"""Reading tensors without trusting the file: safetensors headers checked, data memory-mapped.

A safetensors file is an 8-byte little-endian header length, a JSON header
`{key: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}` and a data section.
We parse the header ourselves so every entry is checked against the file size *before* anything is
allocated: a truncated download or a garbled header becomes one `AdapterFormatError` naming the
file and the tensor, never a segfault or a 40 GB allocation. Tensors are then exposed as zero-copy
views over a copy-on-write memory map (`mmap.ACCESS_COPY` + `torch.frombuffer`): loading an adapter
reads only its header, and pages are read from disk when a tensor is first used.

`.bin` pickles are read only through `torch.load(weights_only=True)`; anything that needs code to
unpickle is refused. Both readers speak the small `TensorSource` protocol that the format parsers use.
"""
from __future__ import annotations

import json
import logging
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from analysis.errors import AdapterFormatError

log = logging.getLogger(__name__)

#: safetensors dtype code -> (torch dtype, bytes per element). Adapters are float; anything else is refused.
SUPPORTED_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
}
_TORCH_TO_CODE = {dt: code for code, (dt, _) in SUPPORTED_DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit


class TensorSource(Protocol):
    """What the format parsers need from a weights file: names, shapes, dtypes, lazy tensors."""

    path: Path
    metadata: dict[str, str]

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> str: ...

    def get(self, key: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorEntry:
    """One validated header entry; `begin`/`end` are offsets into the data section."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _fail(path: Path, what: str) -> AdapterFormatError:
    return AdapterFormatError(f"{path}: {what}")


def _parse_entry(path: Path, key: str, raw: object, data_len: int) -> TensorEntry:
    """Check one header entry: known float dtype, non-negative shape, offsets inside the data section."""
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= raw.keys():
        raise _fail(path, f"tensor '{key}': header entry must have dtype, shape and data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in SUPPORTED_DTYPES:
        raise _fail(path, f"tensor '{key}': unsupported dtype {dtype!r} "
                          f"(adapters must be {'/'.join(SUPPORTED_DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _fail(path, f"tensor '{key}': shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"tensor '{key}': data_offsets {offsets!r} must be [begin, end] with 0 <= begin <= end")
    need = math.prod(shape) * SUPPORTED_DTYPES[dtype][1]
    if offsets[1] - offsets[0] != need:
        raise _fail(path, f"tensor '{key}': data_offsets {offsets} span {offsets[1] - offsets[0]} bytes "
                          f"but shape {shape} of {dtype} needs {need}")
    if offsets[1] > data_len:
        raise _fail(path, f"tensor '{key}': data_offsets {offsets} run past the end of the data section "
                          f"({data_len} bytes): the file is truncated")
    return TensorEntry(key, dtype, tuple(shape), offsets[0], offsets[1])


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    """Parse and validate a safetensors header without touching tensor data.

    Returns (entries by key, `__metadata__`, byte offset where the data section starts).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _fail(path, f"not a safetensors file or truncated: header length {n} does not fit "
                              f"in the file ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"garbled safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise _fail(path, "garbled safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = size - data_start
    entries = {k: _parse_entry(path, k, v, data_len) for k, v in header.items()}
    _check_no_overlap(path, entries)
    return entries, dict(metadata), data_start


def _check_no_overlap(path: Path, entries: dict[str, TensorEntry]) -> None:
    """Two tensors sharing bytes means a corrupted header (the writer never does that)."""
    spans = sorted((e.begin, e.end, e.key) for e in entries.values() if e.end > e.begin)
    for (b0, e0, k0), (b1, _e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _fail(path, f"tensor '{k1}': data_offsets overlap those of '{k0}' (corrupted header)")


class SafetensorsFile:
    """A validated safetensors file whose tensors are zero-copy views over one memory map.

    The map is opened on the first `get` and stays alive as long as any tensor viewing it does.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries, self.metadata, self._data_start = read_safetensors_header(self.path)
        self._map: mmap.mmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key].shape

    def dtype(self, key: str) -> str:
        return self.entries[key].dtype

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: writable (torch.frombuffer wants that) but never written back to disk.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._map

    def get(self, key: str) -> torch.Tensor:
        """The tensor as a view on the file's pages: no copy, nothing read until it is used."""
        e = self.entries[key]
        dtype, itemsize = SUPPORTED_DTYPES[e.dtype]
        count = (e.end - e.begin) // itemsize
        if count == 0:
            return torch.empty(e.shape, dtype=dtype)
        offset = self._data_start + e.begin
        if offset % itemsize:  # misaligned element start: a view would be unsafe, copy this one tensor
            raw = bytearray(self._mapped()[offset:offset + e.end - e.begin])
            return torch.frombuffer(raw, dtype=dtype, count=count).reshape(e.shape)
        flat = torch.frombuffer(self._mapped(), dtype=dtype, count=count, offset=offset)  # (numel,)
        return flat.reshape(e.shape)


class TorchPickleFile:
    """A `.bin`/`.pt` state dict read with `torch.load(weights_only=True)`: plain tensors or nothing.

    Zip-format checkpoints are memory-mapped by torch itself (`mmap=True`), so this is lazy too.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        state = self._load()
        if not isinstance(state, dict):
            raise _fail(self.path, f"expected a dict of tensors, found {type(state).__name__}")
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise _fail(self.path, f"entry {key!r}: expected a tensor, found {type(value).__name__}")
            if value.dtype not in _TORCH_TO_CODE:
                raise _fail(self.path, f"tensor '{key}': unsupported dtype {value.dtype} "
                                       f"(adapters must be {'/'.join(SUPPORTED_DTYPES)})")
        self._tensors: dict[str, torch.Tensor] = state

    def _load(self) -> object:
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc).lower():
                raise _fail(self.path, f"cannot read torch checkpoint: {_first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - torch raises pickle/unpickling errors of many types
            raise _fail(self.path, "refusing to unpickle: the file needs code execution beyond plain "
                                   f"tensors (torch.load weights_only=True failed: {_first_line(exc)})") from None
        try:  # legacy (non-zip) checkpoints cannot be memory-mapped
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise _fail(self.path, "refusing to unpickle: the file needs code execution beyond plain "
                                   f"tensors (torch.load weights_only=True failed: {_first_line(exc)})") from None

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> str:
        return _TORCH_TO_CODE[self._tensors[key].dtype]

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_weights(path: Path) -> TensorSource:
    """Open a weights file by extension: `.safetensors` parsed here, `.bin`/`.pt`/`.pth` via weights_only."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsFile(path)
    if suffix in (".bin", ".pt", ".pth", ".ckpt"):
        return TorchPickleFile(path)
    raise _fail(path, f"unknown weights file type {suffix!r} (expected .safetensors, .bin, .pt or .pth)")


def nonfinite_counts(src: TensorSource, keys: list[str], *, chunk: int = 1 << 20) -> dict[str, int]:
    """Number of NaN/Inf values per tensor (only those with any), streamed in chunks.

    Reads the data once but allocates only one chunk-sized mask at a time.
    """
    bad: dict[str, int] = {}
    for key in keys:
        flat = src.get(key).reshape(-1)  # (numel,)
        n = 0
        for start in range(0, flat.numel(), chunk):
            n += int((~torch.isfinite(flat[start:start + chunk])).sum())
        if n:
            bad[key] = n
    return bad
