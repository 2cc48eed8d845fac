"""The measuring half of bench/retention_truth.py, through the tool's own evaluation layer (`analysis.evaluation`):
exact match on the first `em_rows` eval rows and answer NLL on the first `nll_rows`, of base + deltas, one task."""
from __future__ import annotations

from typing import Any, Mapping

from analysis.adapters.model import Delta


class Measurer:
    def __init__(self, data_dir: str, *, em_rows: int, nll_rows: int) -> None:
        from analysis.evaluation import Evaluator, ModelSpec, load_data, load_model

        self.data_dir = data_dir
        loaded = load_model(ModelSpec())  # the sample base
        data = load_data([data_dir], metric="both")
        self.exact = Evaluator(loaded, data, limit=em_rows)
        self.loss = Evaluator(loaded, data, limit=nll_rows)
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self.identity = self.exact.identity.line()

    def prompts(self, task: str, n: int) -> list[str]:
        """The first n TRAIN prompts of the task (unlabeled: the answers are not read)."""
        from analysis.consolidate.data import load_rows

        return [r["prompt"] for r in load_rows(self.data_dir, task, "train")[:n]]

    def measure(self, deltas: Mapping[str, Delta], task: str) -> dict[str, Any]:
        acc = self.exact.score(deltas, [task], metrics=("exact",))[task]
        nll = self.loss.score(deltas, [task], metrics=("nll",))[task]
        return {"accuracy": float(acc.accuracy or 0.0), "nll": float(nll.nll), "n_em": acc.n, "n_nll": nll.n}
