"""Reading tensors without trusting the file: bytes read once, safetensors headers checked.

A safetensors file is an 8-byte little-endian header length, a JSON header
`{key: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}` and a data section.
The file is read into memory exactly once (regular files only, bounded: see `limits`), and we parse
the header ourselves so every entry is checked against that length *before* anything is allocated:
a truncated download or a garbled header becomes one `AdapterFormatError` naming the file and the
tensor, never a segfault or a 40 GB allocation. Tensors are zero-copy views over those bytes
(`torch.frombuffer`), so the numbers in use are exactly the bytes the adapter's sha256 was computed
from. (An earlier design memory-mapped the file: a same-size rewrite then changed the numbers while
the hash still named the old content, and truncation killed the process with SIGBUS.)

`.bin` pickles are read only through `torch.load(weights_only=True)` on the same in-memory bytes;
anything that needs code to unpickle is refused. Both readers speak the small `TensorSource`
protocol that the format parsers use.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from analysis.adapters.limits import read_regular_file
from analysis.adapters.safe_text import short_repr as _short
from analysis.adapters.safe_text import unique_keys
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
    """What the format parsers need from a weights file: names, shapes, dtypes, tensors."""

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


#: Most tensors accepted in one file: each costs Python work at load, so this bounds load time.
MAX_TENSORS = 50_000
#: Largest single dimension accepted in a header: far above any real layer, far below int64 overflow.
MAX_DIM = 1 << 40
#: Header bytes allowed per tensor entry (a real one is ~100-250: name, dtype, shape, offsets) and for the
#: `__metadata__` strings (kohya's training metadata reaches a few MB). Parsing JSON costs ~0.1 s per MB
#: here and ~15x its size in memory, so the header must be bounded by what its tensor count can explain
#: *before* it is parsed: a 100 MB header of valid JSON took 86 s and 1.6 GB to refuse.
MAX_ENTRY_BYTES = 512
MAX_METADATA_BYTES = 16 << 20


def _check_header_budget(path: Path, data: bytes | bytearray, n: int) -> None:
    """Refuse, in milliseconds, a header larger than its tensors can need (a C-speed count, no parsing).

    Every entry holds the literal `"data_offsets"` once (an escaped copy inside a string does not match), so
    the count bounds the number of tensors from above; the header may then hold at most that many entries
    of MAX_ENTRY_BYTES plus MAX_METADATA_BYTES of metadata."""
    count = data.count(b'"data_offsets"', 8, 8 + n) if n > MAX_METADATA_BYTES else 0  # no copy of the header
    if count > MAX_TENSORS:
        raise _fail(path, f"about {count} tensors in one file (at most {MAX_TENSORS}; the largest real adapters "
                          "hold a few thousand)")
    budget = count * MAX_ENTRY_BYTES + MAX_METADATA_BYTES
    if n > budget:
        raise _fail(path, f"safetensors header of {n} bytes for {count} tensors: at most {budget} expected "
                          f"({MAX_ENTRY_BYTES} bytes per tensor plus {MAX_METADATA_BYTES >> 20} MiB of metadata); "
                          "refused before parsing")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(path: Path, key: str, raw: object, data_len: int) -> TensorEntry:
    """Check one header entry: known float dtype, sane shape, offsets inside the data section."""
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= raw.keys():
        raise _fail(path, f"tensor '{key}': header entry must have dtype, shape and data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SUPPORTED_DTYPES:
        raise _fail(path, f"tensor '{key}': unsupported dtype {_short(dtype)} "
                          f"(adapters must be {'/'.join(SUPPORTED_DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise _fail(path, f"tensor '{key}': shape {_short(shape)} is not a list of at most 8 integers in "
                          f"[0, 2^40]")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"tensor '{key}': data_offsets {_short(offsets)} must be [begin, end] with "
                          "0 <= begin <= end")
    need = math.prod(shape) * SUPPORTED_DTYPES[dtype][1]
    if offsets[1] - offsets[0] != need:
        raise _fail(path, f"tensor '{key}': data_offsets {offsets} span {offsets[1] - offsets[0]} bytes "
                          f"but shape {shape} of {dtype} needs {need}")
    if offsets[1] > data_len:
        raise _fail(path, f"tensor '{key}': data_offsets {offsets} run past the end of the data section "
                          f"({data_len} bytes): the file is truncated")
    return TensorEntry(key, dtype, tuple(shape), offsets[0], offsets[1])






def parse_safetensors_header(path: Path, data: bytes | bytearray) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    """Parse and validate the header of a safetensors file held in `data` (its whole content).

    Returns (entries by key, `__metadata__`, byte offset where the data section starts). Every entry
    is checked against the real length of `data` before any tensor is built.
    """
    size = len(data)
    if size < 8:
        raise _fail(path, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise _fail(path, f"not a safetensors file or truncated: header length {n} does not fit "
                          f"in the file ({size} bytes)")
    _check_header_budget(path, data, n)
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise _fail(path, f"garbled safetensors header: {_short(str(exc), 200)}") from None
    except RecursionError:
        raise _fail(path, "garbled safetensors header: JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise _fail(path, f"garbled safetensors header: a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise _fail(path, f"{len(header)} tensors in one file (at most {MAX_TENSORS}; the largest real adapters "
                          "hold a few thousand)")
    for key in header:
        if not key or not key.isprintable():
            raise _fail(path, f"tensor name {_short(key)} is empty or holds control characters")
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
    """A validated safetensors file whose tensors are views over one in-memory copy of its bytes.

    The bytes are read once (`limits.read_regular_file`), so the tensors can never change under us
    and the caller's sha256 of the same bytes names exactly these numbers. Memory cost: the file size.
    """

    def __init__(self, path: str | os.PathLike[str], data: bytearray | None = None) -> None:
        self.path = Path(path)
        self.data = read_regular_file(self.path, "weights file") if data is None else data
        self.entries, self.metadata, self._data_start = parse_safetensors_header(self.path, self.data)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key].shape

    def dtype(self, key: str) -> str:
        return self.entries[key].dtype

    def get(self, key: str) -> torch.Tensor:
        """The tensor as a view on the bytes read at open: no copy (one for a misaligned tensor)."""
        e = self.entries[key]
        dtype, itemsize = SUPPORTED_DTYPES[e.dtype]
        count = (e.end - e.begin) // itemsize
        if count == 0:
            return torch.empty(e.shape, dtype=dtype)
        offset = self._data_start + e.begin
        if offset % itemsize:  # misaligned element start: a view would be unsafe, copy this one tensor
            raw = bytearray(self.data[offset:offset + e.end - e.begin])
            return torch.frombuffer(raw, dtype=dtype, count=count).reshape(e.shape)
        flat = torch.frombuffer(self.data, dtype=dtype, count=count, offset=offset)  # (numel,)
        return flat.reshape(e.shape)


class TorchPickleFile:
    """A `.bin`/`.pt` state dict read with `torch.load(weights_only=True)`: plain tensors or nothing.

    Loaded from the bytes read once at open (torch copies the tensors out of them).
    """

    def __init__(self, path: str | os.PathLike[str], data: bytearray | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        state = self._load(read_regular_file(self.path, "weights file") if data is None else data)
        if not isinstance(state, dict):
            raise _fail(self.path, f"expected a dict of tensors, found {type(state).__name__}")
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise _fail(self.path, f"entry {_short(key)}: expected a tensor, found {type(value).__name__}")
            if not key or not key.isprintable():
                raise _fail(self.path, f"tensor name {_short(key)} is empty or holds control characters")
            if value.dtype not in _TORCH_TO_CODE:
                raise _fail(self.path, f"tensor '{key}': unsupported dtype {value.dtype} "
                                       f"(adapters must be {'/'.join(SUPPORTED_DTYPES)})")
            if value.is_sparse or value.layout != torch.strided:
                raise _fail(self.path, f"tensor '{key}': sparse or non-strided tensors are not adapter factors")
        self._tensors: dict[str, torch.Tensor] = state

    def _load(self, data: bytearray) -> object:
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises pickle/unpickling errors of many types
            raise _fail(self.path, "refusing to unpickle: the file needs code execution beyond plain "
                                   f"tensors, or is not a torch checkpoint (torch.load weights_only=True "
                                   f"failed: {_short(_first_line(exc), 200)})") from None

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


def open_weights(path: Path, data: bytearray | None = None) -> TensorSource:
    """Open a weights file by extension: `.safetensors` parsed here, `.bin`/`.pt`/`.pth` via weights_only.

    `data` is the file's content when the caller already read it (to hash the same bytes).
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsFile(path, data)
    if suffix in (".bin", ".pt", ".pth", ".ckpt"):
        return TorchPickleFile(path, data)
    raise _fail(path, f"unknown weights file type {suffix!r} (expected .safetensors, .bin, .pt or .pth)")


def scan_values(src: TensorSource, keys: list[str], *, chunk: int = 1 << 22) -> dict[str, tuple[int, float]]:
    """{key: (number of NaN/Inf values, largest finite |value|)} for every tensor, streamed in chunks.

    One `aminmax` per chunk (NaN and Inf propagate into it), so a clean tensor costs one fast pass;
    only a chunk with a bad value is scanned again to count them. No full-size temporaries.
    """
    out: dict[str, tuple[int, float]] = {}
    for key in keys:
        flat = src.get(key).reshape(-1)  # (numel,)
        bad, peak = 0, 0.0
        for start in range(0, flat.numel(), chunk):
            part = flat[start:start + chunk]
            lo, hi = (float(v) for v in torch.aminmax(part))
            if math.isfinite(lo) and math.isfinite(hi):
                peak = max(peak, -lo, hi)
                continue
            finite = torch.isfinite(part)
            bad += int(part.numel() - int(finite.sum()))
            if bool(finite.any()):
                peak = max(peak, float(part[finite].abs().max()))
        out[key] = (bad, peak)
    return out
