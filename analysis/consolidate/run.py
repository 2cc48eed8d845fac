"""One consolidation end to end: train, export the PEFT adapter, measure accuracy ON THE EXPORTED FILE, record.

Used by `adapter-atlas consolidate` and `bench/consolidate_table.py`. The accuracy in `training.json` is
measured on the adapter re-read from disk (not the live training modules), so it is the number a user of
the written adapter gets.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from analysis.adapters.model import Adapter
from analysis.consolidate.evaluator import Evaluate
from analysis.consolidate.export import export_check, json_text, recipe_record, write_json, write_peft
from analysis.consolidate.train import ConsolidateConfig, Progress, consolidate

log = logging.getLogger(__name__)


def run_consolidation(model: Any, tokenizer: Any, adapters: Sequence[Adapter], data_dir: str,
                      cfg: ConsolidateConfig, out: str | Path, *, evaluate: Evaluate | None = None,
                      own_accuracy: dict[str, float] | None = None, base: str | None = None, force: bool = False,
                      progress: Progress | None = None, dtype: str = "fp32") -> dict[str, Any]:
    """Train, write `out` (PEFT files in `dtype`, recipe.json, training.json) and return the training record."""
    from analysis.adapters import load_adapter
    from analysis.consolidate.export import prepare_out

    out = prepare_out(out, force)  # refuse before minutes of training
    t0 = time.time()
    result = consolidate(model, tokenizer, adapters, data_dir, cfg, progress=progress)
    record = dict(result.record)
    record["recipe"] = recipe_record(adapters, record["config"], data_dir, base)
    # recipe.json (our signature) goes in with the weights, so a kill before training.json leaves a folder a rerun
    # with --force replaces
    write_peft(out, result.modules, list(adapters), force=force, texts={"recipe.json": json_text(record["recipe"])},
               dtype=dtype)
    record["export"] = {**export_check(out, result.modules), "dtype": dtype}
    if evaluate is not None:
        exported = load_adapter(Path(out))
        t1 = time.time()
        acc = evaluate(exported.modules, [a.name for a in adapters])
        record["accuracy"] = acc
        record["seconds"]["evaluate"] = round(time.time() - t1, 1)
        if own_accuracy:
            record["own_accuracy"] = dict(own_accuracy)
            record["retention"] = {t: (acc[t] / own_accuracy[t] if own_accuracy.get(t) else None) for t in acc}
            vals = [v for v in record["retention"].values() if v is not None]
            record["mean_retention"] = sum(vals) / len(vals) if vals else None
    record["seconds"]["total"] = round(time.time() - t0, 1)
    write_json(Path(out) / "training.json", record)
    return record
