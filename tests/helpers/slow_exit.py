"""A Dask task that makes its worker process slow to exit (an atexit sleep), as torch teardown is on a loaded
machine: closing a LocalCluster with dask's defaults then kills it ("killed by signal 9")."""
from __future__ import annotations

import atexit
import time


def register_slow_exit(batch: list, seconds: float) -> list:
    atexit.register(time.sleep, seconds)
    return [len(batch)]
