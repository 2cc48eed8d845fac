"""Several merges at once, one per core: the Merge page's comparison of methods.

The merges of one comparison share nothing mutable (the adapter set and the cores are read only), and
on the sample set each method spends its time in many small torch/numpy operations that use one core
well and two badly (measured: two intra-op threads gave no gain). So the comparison runs its merges side
by side in a small thread pool instead, each merge capped at one torch thread (torch and numpy release
the GIL inside their kernels). `workers` defaults to the cores divided by the per-request thread cap
(`analysis.threads.default_threads`), at most the number of merges: two workers on a 2-core machine.

Progress and cancellation stay with the caller's thread: `poll()` is called there every `poll_every`
seconds (the app redraws its progress bar from it, because Streamlit widgets belong to the script's
thread); if it raises (the user pressed Cancel, Streamlit stopped the script), every running merge is
stopped at its next module (`Cancelled`), the pool is drained, and the exception propagates.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Hashable, Mapping, TypeVar

from analysis.errors import AtlasError, Cancelled
from analysis.workflow.progress import ProgressFn

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# job(progress) -> result; `progress(stage, done, total, eta, label)` is the pipeline's ProgressFn
Job = Callable[[ProgressFn], T]


def default_workers(jobs: int) -> int:
    """ADAPTER_ATLAS_WORKERS if set, else cores // per-request threads; at least 1, at most `jobs`."""
    from analysis.threads import default_threads

    env = os.environ.get("ADAPTER_ATLAS_WORKERS", "").strip()
    n = int(env) if env.isdigit() and int(env) > 0 else max(1, (os.cpu_count() or 1) // default_threads())
    return max(1, min(n, jobs))


def run_side_by_side(jobs: Mapping[K, Job], *, workers: int | None = None,
                     progress: Callable[[K, str, int, int, "float | None", str], None] | None = None,
                     poll: Callable[[], None] | None = None, poll_every: float = 0.2,
                     on_result: Callable[[K, object], None] | None = None) -> dict[K, object]:
    """Run `jobs` in a pool of `workers` threads, each inside `bounded_threads(1)`.

    Returns {key: result, or the `AtlasError` the job raised} in the keys' order; any other exception is
    re-raised after the pool is drained. `progress(key, stage, done, total, eta, label)` is called from the
    workers (keep it to bookkeeping); `poll()` and `on_result(key, result)` (as each job finishes, so a
    cancel keeps what was already done) from this thread."""
    from analysis.threads import bounded_threads

    stop = threading.Event()

    def run(key: K, job: Job) -> object:
        def step(stage: str, done: int, total: int, eta: float | None, label: str) -> None:
            if stop.is_set():
                raise Cancelled("cancelled by the user: nothing was written")
            if progress is not None:
                progress(key, stage, done, total, eta, label)

        with bounded_threads(1):
            try:
                return job(step)
            except AtlasError as exc:  # one method's refusal is its row's message, not the comparison's end
                return exc

    n = workers if workers is not None else default_workers(len(jobs))
    pool = ThreadPoolExecutor(max_workers=max(1, min(n, len(jobs)) if jobs else 1),
                              thread_name_prefix="atlas-merge")
    futures: dict[K, Future] = {}
    try:
        futures = {key: pool.submit(run, key, job) for key, job in jobs.items()}
        key_of = {f: key for key, f in futures.items()}
        pending = set(futures.values())
        while pending:
            if poll is not None:
                poll()
            finished, pending = wait(pending, timeout=poll_every, return_when=FIRST_COMPLETED)
            for f in finished:
                value = f.result()  # re-raises a job's unexpected exception here
                if on_result is not None:
                    on_result(key_of[f], value)
        if poll is not None:
            poll()
        return {key: f.result() for key, f in futures.items()}
    except BaseException:
        stop.set()  # running merges stop at their next module; queued ones never start
        for f in futures.values():
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
