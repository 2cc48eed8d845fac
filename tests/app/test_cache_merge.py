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


def test_merge_cores_and_accuracy_run_under_the_thread_cap(one_thread_cap, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import analysis.base_model
    import analysis.evaluate
    import analysis.isolation
    from app import cache

    seen: dict[str, int] = {}

    def task_cores(adapters: Any, **_: Any) -> list:
        seen["cores"] = torch.get_num_threads()
        return []

    def evaluate_deltas(model: Any, tokenizer: Any, deltas: Any, tasks: list[str], limit: Any = None) -> dict:
        seen["accuracy"] = torch.get_num_threads()
        return {t: {"accuracy": 0.5, "n": 2} for t in tasks}

    monkeypatch.setattr(analysis.isolation, "task_cores", task_cores)
    monkeypatch.setattr(analysis.evaluate, "evaluate_deltas", evaluate_deltas)
    monkeypatch.setattr(analysis.base_model, "load_base_model", lambda: (None, None))
    merge_section = importlib.import_module(cache._accuracy.__module__)  # app.cache, or its merge module
    monkeypatch.setattr(merge_section, "adapters_of", lambda refs: [])
    cache.merge_cores.clear()
    assert cache.merge_cores((("p", "0" * 64, "a"),), "rows", 0.5) == []
    assert cache._accuracy({}, "task", 2) == {"accuracy": 0.5, "n": 2}
    assert seen == {"cores": 1, "accuracy": 1}
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
