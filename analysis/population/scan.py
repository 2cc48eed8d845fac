"""The population scan: walk roots, sketch every new or changed adapter in parallel Dask tasks, store.

Where the work runs is a choice of scheduler, never of code: a `LocalCluster` on this machine by
default, any running `dask.distributed` scheduler by address (its workers need this package
installed and the adapter paths readable), an existing `Client`, or "synchronous" (dask's
single-threaded scheduler, for debugging and as the reference the parallel runs must agree with).
Tasks take batches of paths, so per-task overhead is paid once per batch; at most a few batches per
worker are in flight and finished rows go to a Parquet part every `part_rows`, so the driver's memory
does not grow with the number of adapters (only the catalog of paths does, ~100 bytes each).

A location whose signature (names, sizes, mtimes) is unchanged since the last scan is not read again;
a changed or new one is loaded, hashed (sha256 of its files) and sketched, and a sketch whose sha256 is
already stored is not written twice. Anything that fails to load becomes a catalog row with a one-line
reason: a scan never stops on a bad file.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from analysis.errors import AtlasError
from analysis.population.sketch import SketchConfig, sketch_adapter
from analysis.population.store import IndexStore
from analysis.population.walk import find_adapters, signature

log = logging.getLogger(__name__)

SYNCHRONOUS = "synchronous"
Progress = Callable[[int, int], None]  # (done, total) over the adapters that need sketching


@dataclass
class ScanReport:
    """What a scan did: counts, the failures with their reasons, repairs, the bases found, and the wall time."""

    total: int = 0  # = sketched + reused + duplicates + len(failed)
    sketched: int = 0
    reused: int = 0
    duplicates: int = 0
    removed: int = 0  # locations of the previous scan that are gone (or outside the roots) and left the index
    failed: list[tuple[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # one line per damaged file found and rebuilt
    bases: list[dict[str, Any]] = field(default_factory=list)  # {"base_model", "layout", "adapters"}, largest first
    ann: dict[str, Any] = field(default_factory=dict)  # what the approximate index update did
    seconds: float = 0.0
    unlisted: list[tuple[str, str]] = field(default_factory=list)  # folders under a root that could not be listed

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "sketched": self.sketched, "reused": self.reused,
                "duplicates": self.duplicates, "removed": self.removed, "seconds": round(self.seconds, 3),
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "repaired": self.repaired,
                "bases": self.bases, "ann": self.ann,
                "unlisted": [{"path": p, "reason": r} for p, r in self.unlisted]}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def sketch_batch(items: list[tuple[str, str]], config: SketchConfig) -> list[dict[str, Any]]:
    """Dask task: load, hash and sketch each (path, signature); a failure is a row with `error` set."""
    from analysis.adapters import load_adapter
    from analysis.threads import bounded_threads

    with bounded_threads(1):  # one task per worker thread: intra-op threads would only oversubscribe
        return [_sketch_one(load_adapter, path, sig, config) for path, sig in items]


def _sketch_one(load: Callable, path: str, sig: str, config: SketchConfig) -> dict[str, Any]:
    row: dict[str, Any] = {"path": path, "name": Path(path).stem if Path(path).is_file() else Path(path).name,
                           "signature": sig, "sha256": None, "error": None, "sketch": None}
    try:
        adapter = load(path)  # NaN/Inf and float32 overflow are refused here
        sk = sketch_adapter(adapter, config)
        if not (np.isfinite(sk.vector).all() and np.isfinite(sk.norm)):
            raise ValueError("NaN/Inf values in its tensors")
        row["sha256"] = adapter.sha256
        row["sketch"] = {
            "sha256": adapter.sha256, "layout": sk.layout, "base_model": adapter.base_model,
            "format": adapter.format, "norm": sk.norm, "vector": sk.vector.astype(np.float32),
            "modules": list(sk.modules), "module_norm": sk.module_norm.astype(np.float32),
            "module_top_sv": sk.module_top_sv.reshape(-1).astype(np.float32),
        }
    except Exception as exc:  # noqa: BLE001 - the task boundary: any failure is reported per file, never raised
        row["sketch"] = None
        row["error"] = _one_line(exc)
    return row


def _batches(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _run_synchronous(fn: Callable, batches: Iterator[list], *args: Any) -> Iterator[list[dict]]:
    import dask

    for batch in batches:
        yield dask.delayed(fn)(batch, *args).compute(scheduler="synchronous")


def _run_distributed(client: Any, fn: Callable, batches: Iterator[list], *args: Any) -> Iterator[list[dict]]:
    from distributed import as_completed

    in_flight = 2 * max(1, len(client.scheduler_info().get("workers", {}))) + 2
    pending = as_completed()
    for batch in batches:
        pending.add(client.submit(fn, batch, *args, pure=False))
        if pending.count() >= in_flight:
            future = next(pending)
            yield future.result()
            future.release()
    for future in pending:
        yield future.result()
        future.release()


def map_batches(fn: Callable, batches: Iterator[list], *args: Any, scheduler: str | None = None,
                workers: int | None = None, client: Any = None, processes: bool = True) -> Iterator[list]:
    """Yield fn(batch, *args) for every batch, in completion order, with a bounded number in flight.

    `scheduler`: None (a LocalCluster of `workers` one-thread workers, closed at the end), an address,
    or SYNCHRONOUS; an existing `client` wins over both. `fn` must be importable by the workers.
    """
    if scheduler == SYNCHRONOUS and client is None:
        yield from _run_synchronous(fn, batches, *args)
        return
    owned = None if client is not None else _client(scheduler, workers, processes)
    try:
        yield from _run_distributed(client or owned, fn, batches, *args)
    finally:
        if owned is not None:
            close_local(owned)


#: Seconds a local worker process gets to exit (torch teardown on a loaded machine takes several) before
#: its nanny kills it; dask's own default is 4 (0.8 x 5), which ends ordinary runs with "killed by signal 9".
CLOSE_TIMEOUT = 60.0


async def _close_nannies(cluster: Any, timeout: float) -> None:
    import asyncio

    nannies = [w for w in cluster.workers.values() if hasattr(w, "kill")]  # process workers (Nanny)
    await asyncio.gather(*(w.close(timeout=timeout, reason="scan-finished") for w in nannies),
                         return_exceptions=True)


def close_local(client: Any, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close a client and the LocalCluster it owns, letting every worker process exit on its own."""
    cluster = client.cluster
    client.close()
    if cluster is None:
        return
    try:
        cluster.sync(_close_nannies, cluster, timeout)
    except Exception as exc:  # noqa: BLE001 - closing must not hide the scan's own result or error
        log.debug("closing the local workers: %s", exc)
    cluster.close()


def _client(scheduler: str | None, workers: int | None, processes: bool) -> Any:
    from distributed import Client, LocalCluster

    if scheduler:
        from analysis.population.scheduler import connect_timeout, parse_scheduler, probe

        if scheduler.startswith("inproc://"):  # a scheduler in this process (LocalCluster(processes=False))
            return Client(scheduler, timeout=f"{connect_timeout():g}s")
        address = parse_scheduler(scheduler)
        probe(address)  # dask's Client never gives up on a server that accepts and stays silent
        try:
            return Client(str(address), timeout=f"{connect_timeout():g}s")
        except (OSError, ValueError, MemoryError) as exc:
            raise AtlasError(f"--scheduler {address}: {_one_line(exc)}") from None
    n = workers or os.cpu_count() or 1
    # loopback only; the scheduler's HTTP server (dashboard / health routes) on a free port, never a fixed 8787
    where = {"host": "127.0.0.1"} if processes else {}  # thread workers talk in-process (inproc://)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address="127.0.0.1:0",
                           silence_logs=logging.ERROR, **where)
    return Client(cluster)


CHECKPOINT_S = 60.0  # the catalog is rewritten this often during a long scan (a kill loses at most this much)


def scan(
    roots: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, config: SketchConfig = SketchConfig(),
    scheduler: str | None = None, workers: int | None = None, client: Any = None, processes: bool = True,
    batch_size: int = 32, part_rows: int = 4096, progress: Progress | None = None, ann: bool = True,
) -> ScanReport:
    """Scan the roots into the index at `out` (see the module docstring for the scheduler choices).

    The index is checked first and whatever cannot be trusted is rebuilt (`IndexStore.for_scan`); a location
    is reused only when its signature is unchanged *and* its sketch is in a sound part. The catalog is
    rewritten every CHECKPOINT_S and at the end, always after the parts it refers to, so a scan killed at any
    point leaves a valid index that the next scan completes. `ann`: bring the approximate index up to date.
    The whole write holds the index's writer lock: a second scan of `out` meanwhile is refused (`IndexBusyError`).
    """
    from analysis.population.lock import writer_lock

    with writer_lock(out, "scan"):
        return _scan_locked(roots, out, config=config, scheduler=scheduler, workers=workers, client=client,
                            processes=processes, batch_size=batch_size, part_rows=part_rows, progress=progress,
                            ann=ann)


def _scan_locked(roots: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, config: SketchConfig,
                 scheduler: str | None, workers: int | None, client: Any, processes: bool, batch_size: int,
                 part_rows: int, progress: Progress | None, ann: bool) -> ScanReport:
    t0 = time.perf_counter()
    store = IndexStore.for_scan(out, config)
    previous = store.read_catalog()
    known = store.verify_parts()
    report = ScanReport()
    # 1. what is there, and what changed since the last scan
    reused: list[dict] = []
    todo: list[tuple[str, str]] = []
    for location in find_adapters(roots, report.unlisted):
        path, sig = str(location), signature(location)
        old = previous.get(path)
        if old is not None and sig and old["signature"] == sig and (old["error"] or old["sha256"] in known):
            reused.append(old)
            if old["error"]:  # still unreadable: counted once, as failed (total adds up)
                report.failed.append((path, old["error"]))
            else:
                report.reused += 1
        else:
            todo.append((path, sig))
    report.total = len(reused) + len(todo)
    seen = {r["path"] for r in reused} | {p for p, _ in todo}
    report.removed = sum(1 for p in previous if p not in seen)
    log.info("scan: %d adapters, %d unchanged, %d still unreadable, %d to sketch, %d gone", report.total,
             report.reused, len(report.failed), len(todo), report.removed)
    # 2. sketch the rest in parallel tasks, streaming rows into part files
    pending = {p: previous[p] for p, _ in todo if p in previous and previous[p]["sha256"] in known}
    fresh: list[dict] = []
    buffer: list[dict] = []
    done, last = 0, time.monotonic()
    if progress is not None:
        progress(0, len(todo))
    results = map_batches(sketch_batch, _batches(todo, batch_size), config, scheduler=scheduler,
                          workers=workers, client=client, processes=processes) if todo else iter(())
    for rows in results:
        for row in rows:
            sketch = row.pop("sketch")
            fresh.append(row)
            pending.pop(row["path"], None)
            if row["error"]:
                report.failed.append((row["path"], row["error"]))
            elif row["sha256"] in known:
                report.duplicates += 1
            else:
                known.add(row["sha256"])
                buffer.append(sketch)
                report.sketched += 1
        if len(buffer) >= part_rows:
            store.append_sketches(buffer)
            buffer = []
        done += len(rows)
        if progress is not None:
            progress(done, len(todo))
        if time.monotonic() - last > CHECKPOINT_S:  # parts first, then a catalog that refers only to them
            store.append_sketches(buffer)
            buffer = []
            store.write_catalog(reused + fresh + list(pending.values()))
            last = time.monotonic()
    store.append_sketches(buffer)
    # 3. the catalog last, so an interrupted scan leaves a valid index in place
    store.write_catalog(reused + fresh)
    report.failed.sort()
    report.bases = bases_of(store)
    if ann:
        from analysis.population.ann import sync_index

        report.ann = sync_index(store)
    report.repaired = list(store.repairs)
    report.seconds = time.perf_counter() - t0
    return report


def bases_of(store: IndexStore) -> list[dict[str, Any]]:
    """The bases of the adapters in the catalog: {"base_model", "layout", "adapters"}, most adapters first."""
    from collections import Counter

    _, shas, errors = store.catalog_columns()
    live = Counter(s for s, e in zip(shas, errors) if s and not e)
    table = store.read_sketches(["base_model", "layout"], keep=set(live))
    counts: Counter = Counter()
    for sha, base, layout in zip(*(table.column(c).to_pylist() for c in ("sha256", "base_model", "layout"))):
        counts[(base or "", layout)] += live[sha]
    return [{"base_model": b, "layout": lay, "adapters": n} for (b, lay), n in counts.most_common()]
