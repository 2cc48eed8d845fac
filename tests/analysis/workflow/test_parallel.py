"""Merges side by side (the Merge page's comparison): same results as one at a time, errors per merge,
and a cancel from the caller's thread stops every running merge and leaves no worker behind."""
from __future__ import annotations

import json
import threading
import time

import pytest
from workflow_factories import peft_adapter

from analysis.errors import Cancelled, RecipeError
from analysis.workflow import AdapterSet, ProgressReporter, run_merge
from analysis.workflow.parallel import default_workers, run_side_by_side

METHODS = ("isolation", "ties", "linear", "tsv")


@pytest.fixture(scope="module")
def trio(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("trio_parallel")
    return AdapterSet.from_paths([peft_adapter(tmp, n, seed=s).path for n, s in (("a", 1), ("b", 2), ("c", 3))])


def _job(aset: AdapterSet, method: str, **kw):  # noqa: ANN003, ANN202
    return lambda step: run_merge(aset, method, progress=ProgressReporter(step), **kw)


def _alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("atlas-merge")]


def test_side_by_side_gives_the_evidence_of_one_at_a_time_in_the_keys_order(trio) -> None:  # noqa: ANN001
    seen: dict[str, set[str]] = {}
    polls = []
    got = run_side_by_side({m: _job(trio, m) for m in METHODS}, workers=2,
                           progress=lambda key, stage, *_: seen.setdefault(key, set()).add(stage),
                           poll=lambda: polls.append(threading.current_thread().name), poll_every=0.01)
    assert list(got) == list(METHODS)
    for m in METHODS:
        alone = run_merge(trio, m)
        assert json.dumps(got[m].evidence, sort_keys=True) == json.dumps(alone.evidence, sort_keys=True)
        assert {"merge", "preview"} <= seen[m]
    assert polls and set(polls) == {threading.current_thread().name}  # poll runs in the caller's thread
    assert _alive() == []


def test_a_refused_merge_is_its_own_result_and_the_others_finish(trio) -> None:  # noqa: ANN001
    got = run_side_by_side({"bad": _job(trio, "linear", weights=[0.0, 0.0, 0.0]), "ok": _job(trio, "linear")},
                           workers=2)
    assert isinstance(got["bad"], RecipeError) and "weight" in str(got["bad"]).lower()
    assert got["ok"].evidence["method"] == "linear"


def test_a_poll_that_raises_stops_every_merge_and_drains_the_pool(trio) -> None:  # noqa: ANN001
    running: set[str] = set()  # the slow merges that have started (two fit on two workers)
    stopped: list[str] = []

    def slow(key: str):  # noqa: ANN202 - a merge that reports progress until it is told to stop
        def job(step):  # noqa: ANN001, ANN202
            running.add(key)
            try:
                for i in range(10_000):
                    step("merge", i, 10_000, None, key)
                    time.sleep(0.001)
            except Cancelled:
                stopped.append(key)
                raise
            return key
        return job

    class Stop(Exception):
        pass

    kept: dict[str, object] = {}

    def quick(step):  # noqa: ANN001, ANN202 - finishes before the user presses Cancel
        return "quick"

    def poll_after_quick() -> None:  # once both workers run a slow merge (deterministic under any load)
        if len(running) == 2 and "q" in kept:
            raise Stop  # what Streamlit does to the script when the user presses Cancel

    t0 = time.monotonic()
    with pytest.raises(Stop):
        run_side_by_side({"q": quick, "a": slow("a"), "b": slow("b"), "c": slow("c")}, workers=2,
                         poll=poll_after_quick, poll_every=0.01,
                         on_result=lambda key, value: kept.__setitem__(key, value))
    assert time.monotonic() - t0 < 5  # stopped at the next step, not after 10 s of work
    assert kept == {"q": "quick"}  # what finished before the cancel was handed over (in this thread)
    assert len(stopped) == 2 and _alive() == []  # the two running stopped; the queued one never ran


def test_default_workers_follow_the_cores_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_THREADS", "1")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(5) == 2 and default_workers(1) == 1
    monkeypatch.setenv("ADAPTER_ATLAS_WORKERS", "3")
    assert default_workers(5) == 3
