"""A Dask cluster of separate processes started with the `dask` command line, on loopback.

What a user runs on a cluster (README, "Population scale"), reproduced on one machine for the tests and the
bench: `dask scheduler` writes its address to a scheduler file, `dask worker ADDRESS` processes join it, and
`scan --scheduler ADDRESS` talks to it as to any remote scheduler (no in-process cluster, no shared memory).
Every process runs in its own session and is ended (SIGTERM, then SIGKILL) when the context exits, whatever
happened inside it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from analysis.errors import AtlasError

LOOPBACK = "127.0.0.1"


def _dask() -> str:
    here = Path(sys.executable).with_name("dask")
    return str(here) if here.exists() else "dask"


def _env() -> dict[str, str]:
    """Workers import this package: the folder holding it goes first on their PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "OMP_NUM_THREADS": "1",
            "DASK_LOGGING__DISTRIBUTED": "warning"}


def _end(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


def _tail(log: Path) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-3:])


@contextmanager
def cli_cluster(workdir: str | os.PathLike[str], *, workers: int = 1, timeout: float = 120.0) -> Iterator[str]:
    """Start `dask scheduler` and `workers` x `dask worker` (one thread each) on loopback; yield the address."""
    from distributed import Client

    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "scheduler.json"
    info.unlink(missing_ok=True)
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = folder / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen([_dask(), *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_env(), cwd=folder, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        scheduler = start(["scheduler", "--host", LOOPBACK, "--port", "0", "--no-dashboard",
                           "--scheduler-file", str(info)], "scheduler")
        deadline = time.monotonic() + timeout
        address = None
        while address is None:
            if scheduler.poll() is not None:
                raise AtlasError(f"dask scheduler exited ({scheduler.returncode}): {_tail(logs[0])}")
            if time.monotonic() > deadline:
                raise AtlasError(f"dask scheduler gave no address in {timeout:.0f} s: {_tail(logs[0])}")
            try:
                address = json.loads(info.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)
        for w in range(workers):
            start(["worker", address, "--nthreads", "1", "--host", LOOPBACK, "--no-dashboard", "--name", f"w{w}",
                   "--local-directory", str(folder / f"w{w}")], f"worker{w}")
        with Client(address, timeout=f"{timeout}s") as client:
            client.wait_for_workers(workers, timeout=timeout)
        yield address
    finally:
        _end(procs[::-1])
