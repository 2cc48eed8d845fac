"""Write a plan: one PEFT adapter directory per group and `plan.json` describing every group.

A merged group goes through the ordinary merge export (`analysis.export.export_merge`: recipe.yaml,
preview.json, atomic write); a singleton is its input adapter copied as it is (retention 1 by definition).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from analysis.adapters.model import Adapter
from analysis.errors import AtlasError
from analysis.export.outdir import check_out_dir, staged, write_durable
from analysis.plan.planner import Plan

log = logging.getLogger(__name__)


def group_dir_name(k: int, tasks: Sequence[str]) -> str:
    """One folder name: display names such as `run1/adapter` keep their parts joined by `-`, never a subfolder."""
    tasks = [re.sub(r"[^A-Za-z0-9._+#-]+", "-", t).strip("-.") or "adapter" for t in tasks]
    label = "+".join(tasks) if len(tasks) <= 3 else f"{tasks[0]}+{len(tasks) - 1}more"
    return f"group{k:02d}_{label}"


def copy_adapter(adapter: Adapter, dest: Path) -> None:
    dest.mkdir(parents=True)
    files = adapter.files or ([adapter.path] if Path(adapter.path).is_file() else [])
    if not files:
        raise AtlasError(f"{adapter.path}: no files recorded for adapter {adapter.name}")
    for f in files:
        shutil.copy2(f, dest / Path(f).name)


def write_group(members: list[Adapter], method: str, params: dict[str, Any], dest: Path, dtype: str = "fp32") -> None:
    """One merged group through the merge workflow (`analysis.workflow.run_merge`: recipe, evidence, atomic
    write; exact rank for these exactly low-rank methods), or the plain merge + export where it is absent."""
    try:
        from analysis.workflow import AdapterSet, ExportSpec, run_merge
    except ImportError:  # the workflow package is not in this checkout
        from analysis.export import build_recipe, export_merge
        from analysis.merge import merge_adapters
        from analysis.preview import preview_merge

        result = merge_adapters(members, method, params=params)
        recipe = build_recipe(members, method, parameters=params, export_format="peft", dtype=dtype)
        export_merge(result.modules, recipe, dest, inputs=members, preview=preview_merge(members, result.modules))
        return
    run_merge(AdapterSet.from_adapters(members), method, params, export=ExportSpec(format="peft", dtype=dtype)).write(dest)


def export_plan(plan: Plan, adapters: Sequence[Adapter], out: str | Path, *, force: bool = False,
                dtype: str = "fp32") -> dict[str, Any]:
    """Write every group and `plan.json` into a staging folder beside `out`, then swap it in (`staged`): a kill
    at any point leaves the previous plan, or nothing a rerun would refuse. Returns the plan.json data. Merged
    groups are written in `dtype` (`--dtype`); a group of one is its input adapter, copied as it is."""
    out = Path(out)
    check_out_dir(out, inputs=[a.path for a in adapters], force=force)  # --force replaces only an earlier export
    data = plan.as_dict()
    with staged(out) as tmp:
        for k, (group, record) in enumerate(zip(plan.groups, data["groups"])):
            dest = tmp / group_dir_name(k, group.tasks)
            members = [adapters[i] for i in group.members]  # by input index: names are for people
            if len(members) == 1:
                copy_adapter(members[0], dest)
            else:
                write_group(members, group.method, group.parameters, dest, dtype)
            record["path"] = dest.name
            log.info("wrote %s (%s)", out / dest.name, group.method)
        write_durable(tmp / "plan.json", (json.dumps(data, indent=2, default=float) + "\n").encode())
    return data
