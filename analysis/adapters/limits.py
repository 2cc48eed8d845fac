"""Reading files we do not trust, and refusing work that would not fit, before it starts.

Two design rules, each closing a whole class of hostile inputs:

- **Regular files only, read once.** `read_regular_file` refuses anything that is not a regular file
  (FIFO, socket, device, directory) from `os.stat` before opening, opens with `O_NONBLOCK` so a file
  swapped for a FIFO in between cannot block either, checks the open descriptor again, and reads the
  bytes exactly once, bounded by a stated limit. Callers hash *those* bytes and build tensors from
  them, so an adapter's sha256 always names the numbers in use; a file rewritten in place later
  changes nothing already loaded (a memory map would change silently, or SIGBUS on truncation).
- **Estimate before allocating.** `check_dense_budget(shape, dtype, what)` is the one gate in front of
  every densification: it computes the bytes from the shape alone and refuses, with the size in the
  message, anything over `ADAPTER_ATLAS_MAX_DENSE_BYTES`.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import torch

from analysis.errors import AdapterFormatError, ResourceLimitError

#: Largest adapter weights file read into memory (bytes); env ADAPTER_ATLAS_MAX_FILE_BYTES overrides.
DEFAULT_MAX_FILE_BYTES = 4 << 30
#: Largest dense tensor one step may allocate (bytes); env ADAPTER_ATLAS_MAX_DENSE_BYTES overrides.
DEFAULT_MAX_DENSE_BYTES = 2 << 30
#: Largest config / metadata JSON read (bytes): real ones are a few KB.
MAX_CONFIG_BYTES = 16 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        raise ResourceLimitError(f"environment variable {name}={raw!r} is not a number of bytes") from None
    if value <= 0:
        raise ResourceLimitError(f"environment variable {name}={raw!r} must be a positive number of bytes")
    return value


def max_file_bytes() -> int:
    return _env_bytes("ADAPTER_ATLAS_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)


def max_dense_bytes() -> int:
    return _env_bytes("ADAPTER_ATLAS_MAX_DENSE_BYTES", DEFAULT_MAX_DENSE_BYTES)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; any size up to the absurd (a 10^40-byte request still prints)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.4g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def file_kind(mode: int) -> str | None:
    """None for a regular file, else a short description of what the mode is instead."""
    if stat.S_ISREG(mode):
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def require_regular_file(path: Path, what: str) -> os.stat_result:
    """`os.stat` of `path` (symlinks followed), refusing anything that is not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AdapterFormatError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise AdapterFormatError(f"{path!r}: cannot read {what}: {getattr(exc, 'strerror', None) or exc}") from None
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise AdapterFormatError(f"{path}: {what} is {kind}, not a regular file")
    return st


def is_regular_file(path: Path) -> bool:
    """True only for an existing regular file (never opens it)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_regular_file(path: Path, what: str, *, limit: int | None = None) -> bytearray:
    """All bytes of a regular file, read once, at most `limit` bytes (default `max_file_bytes()`).

    Refuses non-regular files before opening, files over the limit before reading, and files whose
    size or modification time changed while they were being read (a concurrent rewrite).
    """
    limit = max_file_bytes() if limit is None else limit
    st = require_regular_file(path, what)
    if st.st_size > limit:
        raise ResourceLimitError(f"{path}: {what} is {human_bytes(st.st_size)}, over the limit of "
                                 f"{human_bytes(limit)} (ADAPTER_ATLAS_MAX_FILE_BYTES)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot open {what}: {exc.strerror or exc}") from None
    try:
        before = os.fstat(fd)
        kind = file_kind(before.st_mode)
        if kind is not None:  # swapped between stat and open
            raise AdapterFormatError(f"{path}: {what} is {kind}, not a regular file")
        if before.st_size > limit:
            raise ResourceLimitError(f"{path}: {what} is {human_bytes(before.st_size)}, over the limit of "
                                     f"{human_bytes(limit)} (ADAPTER_ATLAS_MAX_FILE_BYTES)")
        buf = bytearray(before.st_size)
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = os.readv(fd, [view[got:]])
            if n == 0:
                break
            got += n
        extra = os.read(fd, 1)
        after = os.fstat(fd)
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if got != len(buf) or extra or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise AdapterFormatError(f"{path}: {what} changed while it was being read (expected {before.st_size} "
                                 f"bytes, read {got + len(extra)}): try again once it is written")
    return buf


def dense_bytes(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> int:
    """Bytes a dense tensor of `shape` and `dtype` needs (exact Python integers, no overflow)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return math.prod(int(d) for d in shape) * itemsize


def check_dense_budget(shape: tuple[int, ...] | list[int], dtype: torch.dtype, what: str) -> int:
    """Refuse (ResourceLimitError) before allocating a dense `shape` x `dtype` tensor over the budget.

    `what` names the thing being densified (file and module), so the message reads
    "<what>: dense 100000x100000 float32 needs 37.25 GiB, over the limit of 2 GiB (...)".
    Returns the byte count so callers can log it. The budget is `ADAPTER_ATLAS_MAX_DENSE_BYTES`
    (default 2 GiB); call this for every intermediate of that size, not only the final result.
    """
    need = dense_bytes(shape, dtype)
    limit = max_dense_bytes()
    if need > limit:
        dims = "x".join(str(int(d)) for d in shape)
        raise ResourceLimitError(f"{what}: dense {dims} {str(dtype).removeprefix('torch.')} needs "
                                 f"{human_bytes(need)}, over the limit of {human_bytes(limit)} "
                                 "(set ADAPTER_ATLAS_MAX_DENSE_BYTES to allow more)")
    return need
