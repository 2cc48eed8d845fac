"""app.cache's merge section: every torch computation it starts runs inside one bounded thread pool
(`analysis.threads.bounded_threads`), like `run_merge`, so concurrent sessions do not oversubscribe."""
from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch


@pytest.fixture()
def one_thread_cap(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("ADAPTER_ATLAS_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_merge_cores_and_measuring_run_under_the_thread_cap(one_thread_cap, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import analysis.isolation
    import analysis.workflow
    from app import cache

    seen: dict[str, int] = {}

    def task_cores(adapters: Any, **_: Any) -> list:
        seen["cores"] = torch.get_num_threads()
        return []

    class FakeRun:
        evidence: dict = {}

    def measure_run(run: Any, measure: Any, progress: Any = None) -> Any:
        seen["measure"] = torch.get_num_threads()
        out = FakeRun()
        out.evidence = {"measured": {"rows": []}}
        return out

    class FakeData:
        def select(self, names: list[str]) -> "FakeData":
            return self

    class FakeEvaluator:
        loaded, data, limit, batch_size = None, FakeData(), 2, 32

    monkeypatch.setattr(analysis.isolation, "task_cores", task_cores)
    monkeypatch.setattr(analysis.workflow, "measure_run", measure_run, raising=False)
    merge_section = importlib.import_module(cache.measured.__module__)  # app.cache, or its merge module
    monkeypatch.setattr(merge_section, "adapters_of", lambda refs: [])
    monkeypatch.setattr(merge_section, "merge_export", lambda key, fmt, rank: FakeRun())
    monkeypatch.setattr(merge_section, "evaluator", lambda key: FakeEvaluator())
    import analysis.evaluation

    monkeypatch.setattr(analysis.evaluation, "Evaluator", lambda *a, **k: type("E", (), {"share_memo": lambda s, o: None})())
    cache.merge_cores.clear()
    assert cache.merge_cores((("p", "0" * 64, "a"),), "rows", 0.5) == []
    key = ((("p", "0" * 64, "a"),), "linear", (), None, ("rows", 0.5), "carry")
    assert cache.measured(key, "peft", None, (None, (), (), "exact", 2), ("t",)) == {"rows": []}
    assert seen == {"cores": 1, "measure": 1}
    assert torch.get_num_threads() == 2  # the cap is lifted afterwards


def test_a_merge_runs_under_the_face_s_thread_cap(one_thread_cap, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The library leaves torch's threads alone (`run_merge` sets none): this face caps them around it."""
    import analysis.workflow
    from app import cache

    seen: dict[str, int] = {}

    def run_merge(*_: Any, **__: Any) -> str:
        seen["merge"] = torch.get_num_threads()
        return "run"

    merge_section = importlib.import_module(cache.merge_run.__module__)  # app.cache.merge
    monkeypatch.setattr(analysis.workflow, "run_merge", run_merge)
    monkeypatch.setattr(merge_section, "adapter_set", lambda refs: None)
    monkeypatch.setattr(merge_section, "merge_cores", lambda refs, granularity, p: {})
    key = cache.MergeKey((("p", "0" * 64, "a"),), "linear", (), None, ("entries", 0.01), "carry")
    assert merge_section._merge_job(key)(None) == "run"
    assert seen == {"merge": 1} and torch.get_num_threads() == 2
