"""One consolidation end to end: train, export the PEFT adapter, measure accuracy ON THE EXPORTED FILE, record.

Used by `adapter-atlas consolidate` and `bench/consolidate_table.py`. The accuracy in `training.json` is
measured on the adapter re-read from disk (not the live training modules), so it is the number a user of
the written adapter gets. The full fine-tuning arms write their LoRA at `export_rank` (fidelity in
`training.json`) and the exact dense update as `delta.safetensors` (`analysis.export.delta` format).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.adapters.model import Adapter
from analysis.consolidate.export import (
    DELTA_FILE,
    delta_bytes,
    export_check,
    json_text,
    recipe_record,
    write_json,
    write_peft,
)
from analysis.consolidate.train import ConsolidateConfig, Progress, consolidate
from analysis.evaluation.evaluator import Evaluate
from analysis.evaluation.retention import mean_retention, retention

log = logging.getLogger(__name__)


def run_consolidation(model: Any, tokenizer: Any, adapters: Sequence[Adapter], data_dir: str,
                      cfg: ConsolidateConfig, out: str | Path, *, evaluate: Evaluate | None = None,
                      own_accuracy: dict[str, float] | None = None, base: Mapping[str, Any] | None = None,
                      force: bool = False, progress: Progress | None = None, dtype: str = "fp32") -> dict[str, Any]:
    """Train, write `out` (PEFT files in `dtype`, recipe.json, training.json) and return the training record.

    `base` is the identity of the model trained on (`ModelIdentity.as_dict()`, default the sample base): the
    recipe records it and the written adapter_config.json names it as `base_model_name_or_path`, so PEFT loads
    the adapter on the model it was trained on. Retention is accuracy / own accuracy; a task whose own adapter
    scores 0 has no retention: it is listed in `retention_undefined` and left out of `mean_retention`."""
    from analysis.adapters import load_adapter
    from analysis.consolidate.export import prepare_out

    out = prepare_out(out, force)  # refuse before minutes of training
    t0 = time.time()
    result = consolidate(model, tokenizer, adapters, data_dir, cfg, progress=progress)
    record = dict(result.record)
    record["recipe"] = recipe_record(adapters, record["config"], data_dir, base)
    # recipe.json (our signature) goes in with the weights, so a kill before training.json leaves a folder a rerun
    # with --force replaces; full arms: the rank-`export_rank` LoRA, and the exact dense update next to it
    lora = result.lora if result.lora is not None else result.modules
    blobs = {DELTA_FILE: delta_bytes(result.modules)} if result.lora is not None else None
    write_peft(out, lora, list(adapters), force=force, base_model=record["recipe"]["base"],
               texts={"recipe.json": json_text(record["recipe"])}, blobs=blobs, dtype=dtype)
    record["export"] = {**export_check(out, lora), "dtype": dtype}
    if result.lora is not None:
        record["export"].update(delta=DELTA_FILE, lora_fidelity=record["lora_export"])
    if evaluate is not None:
        exported = load_adapter(Path(out))
        t1 = time.time()
        acc = evaluate(exported.modules, [a.name for a in adapters])
        record["accuracy"] = acc
        record["seconds"]["evaluate"] = round(time.time() - t1, 1)
        if own_accuracy:
            record["own_accuracy"] = dict(own_accuracy)
            record["retention"] = retention(acc, own_accuracy)
            record["mean_retention"], record["retention_undefined"] = mean_retention(record["retention"])
            if record["retention_undefined"]:
                log.warning("retention undefined for %s (own accuracy 0): left out of the mean retention",
                            ", ".join(record["retention_undefined"]))
    record["seconds"]["total"] = round(time.time() - t0, 1)
    write_json(Path(out) / "training.json", record)
    return record
