"""The Merge page's "Measure" section: every compared merge, as written, each input and the base, scored on a
model and data the visitor picks, shown as the decision table (`analysis.workflow.decision`) against the bar.

Each method is measured at its own automatic export (the adapter the Decide section writes unless another rank
or format is picked there; Decide says so and measures that export on request). A measurement the server still
holds is shown without pressing Measure, so a link restores it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import pandas as pd
import streamlit as st

from analysis.errors import AtlasError
from analysis.workflow.decision import Decision, decision_table
from app import cache
from app.components import decision_view, view

MEASURED_AT = ("peft", None)  # each method's own automatic export


@dataclass(frozen=True)
class Measurement:
    """What the Decide section needs: the evaluation key and tasks, the bar and tolerance, the blocks shown."""

    ekey: cache.EvalKey
    tasks: tuple[str, ...]
    bar: float
    tolerance: float
    blocks: Mapping[str, Mapping[str, Any]]  # method -> measured block at MEASURED_AT
    decision: Decision | None

    def frozen(self, method: str, evidence: Mapping[str, Any]) -> dict[str, Any]:
        """The decision table of one method's evidence (with its measured block), as a proposal stores it."""
        return decision_table({method: evidence}, bar=self.bar, tolerance=self.tolerance).to_dict()


def _inputs() -> tuple[cache.EvalKey, list[str], bool] | None:
    """The model, data, metric and row limit controls; None (with an error box) when they do not resolve."""
    m1, m2 = st.columns(2)
    model_choice = m1.radio("Model", ["Sample base", "Model on the server"], key="merge_eval_model_kind",
                            horizontal=True, help="A transformers folder or a .gguf file under the server's roots "
                                                  "(ADAPTER_ATLAS_ROOTS); nothing is downloaded.")
    data_choice = m2.radio("Data", ["Sample tasks", "Data on the server"], key="merge_eval_data_kind", horizontal=True,
                           help="JSONL files (prompt/answer, prompt/completion, chat messages, text), folders "
                                "DIR/<task>/eval.jsonl or a YAML mapping, under the server's roots.")
    model_text = m1.text_input("Model path", key="merge_eval_model", disabled=model_choice == "Sample base",
                               placeholder="/models/my-llama or /models/model.gguf")
    data_text = m2.text_area("Data paths (one per line)", key="merge_eval_data",
                             disabled=data_choice == "Sample tasks", height=80,
                             placeholder="/data/my_tasks/\n/data/general.jsonl")
    view.url_state("merge_eval_metric", "score", default="exact")
    view.url_state("merge_limit", "rows", default=32, kind=int)
    view.url_state("merge_general", "general", default=True, kind=view.bool_param, encode=lambda v: str(int(v)))
    e2, e3, e4 = st.columns(3)
    metric = e2.selectbox("Metric", ["exact", "nll", "both"], key="merge_eval_metric",
                          help="exact: greedy generation, exact match; nll: teacher-forced answer NLL (fast)")
    limit = int(e3.number_input("Rows per task", min_value=1, max_value=10_000, key="merge_limit",
                                help="The first rows of each task's data; the interval narrows with more rows."))
    general = e4.toggle("General-text check", key="merge_general",
                        help=f"Also score {cache.GENERAL_TEXT.name} (40 lines of everyday English, NLL): the merged "
                             "adapter must stay within the tolerance of the base model's NLL.")
    try:
        from app.components.measure_inputs import confine_data, confine_model, stamp

        model_path = None if model_choice == "Sample base" else confine_model(model_text)
        data_paths = () if data_choice == "Sample tasks" else confine_data(data_text)
        if data_choice != "Sample tasks" and not data_paths:
            raise AtlasError("name at least one data file or folder under the server's roots")
        if general:
            data_paths = (*data_paths, str(cache.GENERAL_TEXT))
        stamps = stamp(data_paths)
        tasks = cache.data_tasks(data_paths, stamps, metric)
    except AtlasError as exc:
        st.error(str(exc))
        return None
    return (model_path, data_paths, stamps, metric, limit), tasks, general


def render(runs: Mapping[str, Any], merge_key: Callable[[str], cache.MergeKey], order: list[str]) -> Measurement | None:
    """The whole section; returns what was measured (None when the inputs do not resolve)."""
    got = _inputs()
    if got is None:
        return None
    ekey, tasks, general = got
    text_task = cache.GENERAL_TEXT.stem if general else None
    own = [t for t in tasks if t != text_task]
    default = [t for t in order if t in own] or own[:3]
    if st.session_state.get("merge_tasks_offered") not in (None, own):  # other data: start from its own tasks
        kept = [t for t in st.session_state.get("merge_tasks", []) if t in own]
        st.session_state["merge_tasks"] = kept or default
    st.session_state["merge_tasks_offered"] = own
    picked = view.choose_many("Tasks", own, "merge_tasks", param="task", default=default,
                              help="Each input is scored on every task; a task's own adapter is the input named like "
                                   "it (or the data's mapping): the denominator of its retention.")
    chosen = tuple([*picked, *([text_task] if text_task else [])])
    bar, tolerance = decision_view.controls("merge")
    held = bool(chosen) and all(cache.measured_ready(merge_key(m), *MEASURED_AT, ekey, chosen) for m in runs)
    estimated = all(cache.forecast_ready(merge_key(m), *MEASURED_AT, ekey) for m in runs)
    with st.container(horizontal=True):
        if st.button("Estimate from prompts", key="merge_estimate",
                     help="Data-light, no labels read: on the first 16 prompts of each input's own task, does the "
                          "merge as written greedily write what the task's own adapter writes? One teacher-forced "
                          "pass per task; replaces the data-free estimate in the table below and in a proposal. "
                          "The data-free column beside it is then the reach estimate on the same model (how far each "
                          "update moves the model on text the model wrote itself)."):
            st.session_state["merge_estimated"] = True
        if st.button("Measure", key="merge_measure", type="primary", disabled=not chosen):
            st.session_state["merge_measured"] = True
    light = _estimate(runs, merge_key, ekey) if (st.session_state.get("merge_estimated") or estimated) else {}
    if light:
        _estimate_table(light, order)
    evidence = {m: ({**runs[m].evidence, "tasks": light[m]} if m in light else runs[m].evidence) for m in runs}
    if not chosen or not (st.session_state.get("merge_measured") or held):
        st.info("Pick tasks and press **Measure**: every merge above as written, each input adapter and the base "
                "model are scored on them; retention against the bar decides.")
        return Measurement(ekey, chosen, bar, tolerance, {}, None)
    blocks = _measure(runs, merge_key, ekey, chosen)
    if not blocks:
        return Measurement(ekey, chosen, bar, tolerance, {}, None)
    decision = decision_table({m: {**evidence[m], "measured": b} for m, b in blocks.items()},
                              bar=bar, tolerance=tolerance)
    decision_view.show(decision, key="merge_decision")
    with st.expander("Raw scores: every merge, input adapter and the base model"):
        _raw_table(blocks, order)
    return Measurement(ekey, chosen, bar, tolerance, blocks, decision)


def _measure(runs: Mapping[str, Any], merge_key: Callable[[str], cache.MergeKey], ekey: cache.EvalKey,
             tasks: tuple[str, ...]) -> dict[str, Any]:
    bar = st.progress(0.0, text="Loading the model and measuring…")
    blocks: dict[str, Any] = {}
    try:
        for k, m in enumerate(runs):
            def tick(stage: str, done: int, total: int, eta: object, label: str, k: int = k, m: str = m) -> None:
                bar.progress(min((k + done / max(total, 1)) / len(runs), 1.0), text=f"{m}: {label or stage}")

            blocks[m] = cache.measured(merge_key(m), *MEASURED_AT, ekey, tasks, tick)
    except AtlasError as exc:
        st.error(str(exc))
        blocks = {}
    bar.empty()
    return blocks


def _estimate(runs: Mapping[str, Any], merge_key: Callable[[str], cache.MergeKey],
              ekey: cache.EvalKey) -> dict[str, list[dict[str, Any]]]:
    """method -> the evidence's tasks with the data-light estimate (an error box and {} when it cannot run)."""
    bar = st.progress(0.0, text="Loading the model and estimating from prompts…")
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for k, m in enumerate(runs):
            bar.progress(k / len(runs), text=f"{m}: own answers and agreement")
            out[m] = cache.forecasted(merge_key(m), *MEASURED_AT, ekey)
    except AtlasError as exc:
        st.error(str(exc))
        out = {}
    bar.empty()
    return out


def _estimate_table(light: Mapping[str, list[dict[str, Any]]], order: list[str]) -> None:
    """Method x task: the data-light estimate with its interval and the prompts it ran on, the data-free one beside."""
    from analysis.predict import track_record
    from app.components.estimate_view import cell

    rows = []
    for m, tasks in light.items():
        for t in tasks:
            pred = t.get("predicted_retention") or {}
            on = pred.get("computed_on") or {}
            rows.append({"method": m, "input": t["name"], "data-light estimate": cell(t) if on else "—",
                         "agreement": on.get("agreement"), "prompts": on.get("n"), "prompt task": on.get("task"),
                         "data-free estimate": cell({"predicted_retention": t.get("predicted_retention_data_free")
                                                     if on else pred}),
                         "data-free basis": ((t.get("predicted_retention_data_free") if on else pred) or {}).get("basis")})
    st.markdown("**Estimated from prompts (data-light)**")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"agreement": st.column_config.NumberColumn(
                     help="share of the prompts on which the merge writes exactly the own adapter's answer",
                     format="%.3f")})
    record = track_record("outputs")
    if record is not None:
        st.caption(f"data-light estimate: the agreement with the own adapter's answers (90% interval). Held back "
                   f"from its calibration it ranked measured retention at Spearman {record['spearman_heldout']:.2f} "
                   f"with mean absolute error {record['mae_heldout']:.2f} on {record['n_heldout']} task trials "
                   f"({record['measured_on']}). An estimate: Measure decides.")


def _raw_table(blocks: Mapping[str, Any], order: list[str]) -> None:
    first = next(iter(blocks.values()))
    rows = []
    labels = {"base": "base model"} | {m: f"merge: {m}" for m in blocks}
    for who in ["base", *blocks]:
        row: dict[str, object] = {"model": labels[who]}
        for r in first["rows"] if who == "base" else blocks[who]["rows"]:
            row[f"{r['task']} ({r['metric']})"] = r["base" if who == "base" else "merged"]
        rows.append(row)
    for i, name in enumerate(order):
        row = {"model": f"adapter: {name}"}
        for r in first["rows"]:
            row[f"{r['task']} ({r['metric']})"] = r["inputs"][i]["value"]
        rows.append(row)
    acc = pd.DataFrame(rows)
    st.dataframe(acc, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in acc.columns[1:]})
    st.caption("exact: exact-match accuracy (higher is better); nll: answer NLL in nats per token (lower is better). "
               "A merge row measures the adapter written at its automatic export, not the exact merge.")
    with st.container(horizontal=True):
        st.download_button("Measured (CSV)", acc.to_csv(index=False), file_name="merge_measured.csv",
                           mime="text/csv", key="merge_acc_csv", on_click="ignore")
        st.download_button("Measured (JSON)", json.dumps(dict(blocks), indent=1, default=float),
                           file_name="merge_measured.json", mime="application/json", key="merge_acc_json",
                           on_click="ignore")
