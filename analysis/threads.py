"""Bounded torch threads for one request: `with bounded_threads(2): ...`.

Why: torch's intra-op pool defaults to one thread per core, so two merges running at once on a
2-core server ask for 4 busy threads and each runs several times slower than alone (seen: 14 s alone,
minutes with a second job). Capping every request at a small number keeps the sum near the core count.

What `torch.set_num_threads` does and does not guarantee (read before relying on this):
- It is process global: one value for the whole interpreter, read by every thread's next parallel
  region. Two requests in one process therefore share one cap; this manager cannot give each its own.
  It makes the cap the *minimum* asked by the blocks currently open and restores the value found before
  the first of them only when the last one closes, so no request's exit raises the cap under another.
- It bounds torch's intra-op threads only: not torch's inter-op pool (settable once per process, before
  any parallel work), numpy/BLAS pools outside torch (OMP_NUM_THREADS / MKL_NUM_THREADS at start-up),
  nor other processes. True isolation between requests needs separate processes.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

_lock = threading.Lock()
_open: list[int] = []  # caps of the blocks currently open, in any thread
_saved: list[int] = []  # the thread count found when the first block opened


# torch's pool with 10^5 threads crashes the process (SIGSEGV); a few per core is already past any gain.
# The CLI's option declaration (analysis/commands/options.py) uses the same factor.
THREADS_PER_CORE = 4


def max_threads() -> int:
    return max(1, os.cpu_count() or 1) * THREADS_PER_CORE


def default_threads() -> int:
    """A per-request cap: ADAPTER_ATLAS_THREADS if set (at most `max_threads()`), else half the cores (at least 1)."""
    env = os.environ.get("ADAPTER_ATLAS_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), max_threads())
    return max(1, (os.cpu_count() or 1) // 2)


@contextmanager
def bounded_threads(n: int | None = None) -> Iterator[int]:
    """Run the block with torch's intra-op threads capped at `n` (default `default_threads()`).

    Yields the cap in force. Nesting and concurrent use from several threads are safe: the cap is the
    smallest requested among open blocks, and the original value comes back when the last one closes."""
    want = min(max(1, int(n if n is not None else default_threads())), max_threads())
    with _lock:
        if not _open:
            _saved[:] = [torch.get_num_threads()]
        _open.append(want)
        cap = min(min(_open), _saved[0])
        torch.set_num_threads(cap)
    try:
        yield cap
    finally:
        with _lock:
            _open.remove(want)
            if not _open:
                torch.set_num_threads(_saved[0])
            # while others remain open the cap stays where it is: lowering is safe, raising could oversubscribe
