"""The Merge page's "Plan" section: merge groups on the dendrogram, one row per group, and the consolidation table.

Both come from stored results: a `plan.json` written by `adapter-atlas plan` (default: the sample-set plan in
bench/results_plan.json) and the paired arms of bench/consolidate_table.py (bench/results_consolidate.json:
contrasts with 95% intervals, and the arms with their parameter counts). Planning with data and consolidation
take minutes of evaluation and training, so they run from the CLI; the page shows the commands.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import streamlit as st

from analysis.errors import AtlasError
from app.components import figures
from app.components.display import show_figure
from app.components.sources import FolderRefusedError, confine

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results_consolidate.json"
PLAN_RESULTS = ROOT / "bench" / "results_plan.json"
PLAN_CMD = ("adapter-atlas plan sample_adapters/text_first_word sample_adapters/math_add ... --min-retention 0.9 "
            "--data sample_adapters/tasks --out plan/")
CONSOLIDATE_CMD = ("adapter-atlas consolidate sample_adapters/text_first_word sample_adapters/math_add ... "
                   "--data sample_adapters/tasks --strategy isolation --steps 60 --seed 0 --out consolidated/")


@st.cache_data(show_spinner=False)
def load_json(path: str, mtime: float) -> dict[str, Any] | None:
    """The parsed file (cached per path and modification time), or None when it is not valid JSON
    (regular files only, at most MAX_CONFIG_BYTES: a visitor may name a FIFO or a huge file)."""
    from analysis.adapters.limits import MAX_CONFIG_BYTES, read_regular_file

    try:
        data = json.loads(bytes(read_regular_file(Path(path), "plan.json", limit=MAX_CONFIG_BYTES)).decode("utf-8"))
    except (AtlasError, OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def visitor_plan(text: str) -> dict[str, Any] | None:
    """The plan.json a visitor named (a file or the plan folder), through the one rule for visitor paths:
    `sources.confine` (under the roots, links resolved) or one FolderRefusedError line."""
    path = confine(text)
    if path.is_dir():
        path = confine(path / "plan.json")  # a plan.json that is a link out of the roots is refused too
    return _read(path)


def _read(path: Path) -> dict[str, Any] | None:
    return load_json(str(path), path.stat().st_mtime) if path.is_file() else None


def group_labels(plan: Mapping[str, Any]) -> list[int]:
    """Group index of every task, in the plan's task order."""
    where = {t: k for k, g in enumerate(plan["groups"]) for t in g["tasks"]}
    return [where[t] for t in plan["tasks"]]


def group_rows(plan: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for k, g in enumerate(plan["groups"]):
        measured = g.get("measured") or {}
        rows.append({"group": k, "tasks": ", ".join(g["tasks"]), "method": g["method"],
                     "parameters": ", ".join(f"{a}={b}" for a, b in (g.get("parameters") or {}).items()) or "-",
                     "worst predicted": min(g["predicted"].values()) if g.get("predicted") else None,
                     "worst measured": min(measured.values()) if measured else None,
                     "adapter": g.get("path", "")})
    return pd.DataFrame(rows)


def _interval(x: Mapping[str, Any] | None) -> str:
    return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]" if x else "-"


def contrast_rows(results: Mapping[str, Any]) -> pd.DataFrame:
    """One row per paired contrast A - B: the question, NLL and retention differences with 95% intervals."""
    rows = [{"contrast": c["name"], "A - B": f"{c['a']} - {c['b']}", "question": c.get("question", ""),
             "NLL diff [95% CI] (< 0: A better)": _interval(c.get("nll")),
             "retention diff [95% CI] (> 0: A better)": _interval(c.get("retention"))}
            for c in results.get("contrasts", [])]
    return pd.DataFrame(rows)


def consolidation_rows(results: Mapping[str, Any]) -> pd.DataFrame:
    """One row per arm: parameter counts, mean NLL and retention over tasks and seeds, seconds."""
    rows = []
    for arm, per_seed in results.get("runs", {}).items():
        runs = list(per_seed.values())
        nll = [v for r in runs for v in (r.get("nll") or {}).values()]
        ret = [v for r in runs for v in (r.get("retention") or {}).values() if v is not None]
        rows.append({"arm": arm, "seeds": len(runs), "trainable": runs[0].get("trainable_parameters"),
                     "free": runs[0].get("free_parameters"), "frozen": runs[0].get("frozen_positions"),
                     "mean NLL": float(np.mean(nll)) if nll else None,
                     "mean retention": float(np.mean(ret)) if ret else None,
                     "train s": float(np.mean([(r.get("seconds") or {}).get("train", 0) for r in runs]))})
    return pd.DataFrame(rows)


def _draw_plan(plan: Mapping[str, Any]) -> None:
    adapters_in, adapters_out = plan["adapters_in"], plan["adapters_out"]
    kind = "measured on task data" if plan.get("measured") else "predicted, data-free"
    st.metric("Adapters after planning", f"{adapters_out} of {adapters_in}",
              help=f"every task keeps >= {plan['min_retention']} of its own adapter's accuracy ({kind})")
    groups = group_labels(plan)
    Z = np.asarray(plan.get("linkage") or [])
    if Z.size:
        from scipy.cluster.hierarchy import dendrogram

        layout = dendrogram(Z, no_plot=True, labels=plan["tasks"])
        show_figure(figures.dendrogram(layout, plan["tasks"], metric_label="core Jaccard (least overlap joins first)",
                                       groups=groups), name="plan_dendrogram", key="plan_dendrogram")
    st.dataframe(group_rows(plan), hide_index=True, width="stretch",
                 column_config={"worst predicted": st.column_config.NumberColumn(format="%.3f"),
                                "worst measured": st.column_config.NumberColumn(format="%.3f")})
    tried = plan.get("trials") or []
    if tried:
        with st.expander(f"Every group tried ({len(tried)})"):
            st.dataframe(pd.DataFrame([{"tasks": ", ".join(t["tasks"]), "method": t["method"],
                                        "accepted": t["accepted"], "why": t["reason"]} for t in tried]),
                         hide_index=True, width="stretch")


def render() -> None:
    """The whole section; call it at the end of the Merge page."""
    st.subheader("Plan: the fewest adapters that keep every task")
    st.caption("Groups come from core Jaccard (least overlapping cores join first), the capacity floor and the "
               "data-free preview; with task data every group is verified by real evaluation and split until each "
               "task keeps the bar. Run it from the CLI (minutes of evaluation):")
    st.code(PLAN_CMD, language="bash")
    results = _read(RESULTS)
    path = st.text_input("plan.json to show (empty: the sample-set plan of the stored benchmark)", key="plan_json_path")
    refused = None
    try:
        plan = visitor_plan(path) if path.strip() else (_read(PLAN_RESULTS) or {}).get("plan")
    except FolderRefusedError as exc:  # outside the roots: nothing is read
        plan, refused = None, str(exc)
    if refused:
        st.error(refused)
    elif path.strip() and plan is None:
        st.error(f"{path[:200]}: not a readable plan.json")
    elif plan:
        try:
            _draw_plan(plan)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # JSON, but not our plan
            st.error(f"{path.strip()[:200] or 'the stored plan'}: not a plan.json written by `adapter-atlas plan` "
                     f"({type(exc).__name__}: {str(exc)[:120]})")
    else:
        st.info("No stored plan yet: run `make consolidate` or the command above.")
    st.subheader("Consolidation: does isolating core parameters beat multitask training?")
    st.caption("Paired arms at one budget (same steps, schedule, seeds and, per seed, the same batches; the LoRA arms "
               "train the same number of parameters). Primary metric: teacher-forced answer NLL on the eval rows; "
               "secondary: exact-match retention. Contrasts are A - B over tasks x seeds with 95% bootstrap "
               "intervals. Run one arm from the CLI, the whole table with `make consolidate`:")
    st.code(CONSOLIDATE_CMD, language="bash")
    paired = bool(results and results.get("runs")) and all(
        isinstance(v, dict) and all(isinstance(r, dict) for r in v.values()) and "strategy" not in v
        for v in results["runs"].values())  # {arm: {seed: run}}; older files hold {strategy: run}
    if results and results.get("runs") and not paired:
        st.info("The stored consolidation results predate the paired-arms protocol (one run per strategy): "
                "rerun `make consolidate` to fill this table.")
    elif results and results.get("runs"):
        s = results.get("settings", {})
        label = results.get("label", "")
        note = (f"{label}: {len(s.get('tasks', []))} tasks, seeds {s.get('seeds')}, {s.get('steps')} steps x batch "
                f"{s.get('batch_size')}, NLL on {s.get('rows')} eval rows, exact match on {s.get('em_rows')} "
                "(bench/results_consolidate.json).")
        (st.warning if "REDUCED" in label.upper() else st.caption)(note)
        try:  # a results file of another layout (an older bench) must not break the Merge page
            contrasts = contrast_rows(results) if results.get("contrasts") else None
            table = consolidation_rows(results)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            st.warning(f"bench/results_consolidate.json is not in the layout this page reads ({type(exc).__name__}): "
                       "rerun `make consolidate`.")
        else:
            if contrasts is not None:
                st.dataframe(contrasts, hide_index=True, width="stretch")
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={"mean NLL": st.column_config.NumberColumn(format="%.3f"),
                                        "mean retention": st.column_config.NumberColumn(format="%.3f")})
    else:
        st.info("No stored consolidation results yet (`make consolidate`).")
