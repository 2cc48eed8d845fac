"""Merge: pick adapters and methods, compare what each merge keeps of every task, then export it."""
from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.errors import AtlasError
from analysis.merge import METHODS, get_method
from analysis.merge.registry import Param
from app import cache
from app.components import view
from app.components.display import show_figure

DEFAULT_METHODS = ["isolation", "linear", "task_arithmetic", "ties", "orthogonal"]
METRIC_COLUMNS = {  # preview key -> (column label, help)
    "core_retention": ("core retention", "share of the task's top-p core positions whose merged value stays within "
                                         "25% of the task's own (1 = core intact)"),
    "interference": ("interference", "||(dW_merged − dW_t) V_t|| / ||dW_t V_t|| on the task's own input subspace "
                                     "(0 = the task's inputs move exactly as it trained them)"),
    "cosine": ("cosine", "cosine between the merged update and the task's own"),
    "conflicts": ("conflicts", "core positions of this task that another task's core also claims"),
}

st.title("Merge")
st.caption("Isolation merging (Wang, Liang & Peng 2025): each task keeps its core, the top p of its parameters by "
           "|dW|, transplanted unchanged; everything else is blended (mean by default, which measured better than SLERP on the sample set). Tasks whose cores overlap "
           "(Jaccard ≥ τ) are grouped; a position two groups both claim is a conflict, resolved by a stated policy "
           "and counted. Row/column cores keep the merge exactly low rank, entry cores give a dense update. "
           "Compare it here with the classic merges on data-free diagnostics, then on real accuracy.")

refs, _ = view.adapter_set(minimum=2)
names = [ref[2] for ref in refs]

# 1. Inputs and weights
st.subheader("1 · Adapters")
st.session_state.setdefault("merge_inputs", names)
st.session_state["merge_inputs"] = [n for n in st.session_state["merge_inputs"] if n in names]
chosen = st.multiselect("Adapters to merge", names, key="merge_inputs")
chosen_refs = tuple(ref for ref in refs if ref[2] in chosen)
if len(chosen_refs) < 2:
    st.info("Pick at least two adapters.")
    st.stop()
custom = st.toggle("Custom weights", key="merge_custom_weights",
                   help="Off: each method's own default (1/N for mean-type methods, 1 for sums).")
weights: tuple[float, ...] | None = None
if custom:
    cols = st.columns(len(chosen_refs))
    weights = tuple(float(col.number_input(ref[2], value=1.0, step=0.1, key=f"merge_w_{ref[2]}"))
                    for col, ref in zip(cols, chosen_refs))


# 2. Methods, with controls generated from each method's parameter declaration
def control(method: str, param: Param) -> object:
    """One widget per declared parameter: its type picks the widget, its range and help come along."""
    key, label = f"merge_{method}_{param.name}", param.name
    if param.type is bool:
        return st.checkbox(label, value=bool(param.default), help=param.help, key=key)
    if param.choices:
        return st.selectbox(label, list(param.choices), index=list(param.choices).index(param.default),
                            help=param.help, key=key)
    if param.type is int:
        return int(st.number_input(label, value=int(param.default), step=1, help=param.help, key=key,
                                   min_value=int(param.low) if param.low is not None else None,
                                   max_value=int(param.high) if param.high is not None else None))
    if param.type is float:
        return float(st.number_input(label, value=float(param.default), help=param.help, key=key, format="%.4g",
                                     min_value=param.low, max_value=param.high))
    return st.text_input(label, value=str(param.default), help=param.help, key=key)


st.subheader("2 · Methods")
st.session_state.setdefault("merge_methods", [m for m in DEFAULT_METHODS if m in METHODS])
methods = st.multiselect("Methods to compare", sorted(METHODS), key="merge_methods",
                         help="Every registered method; their parameters appear below.")
params: dict[str, dict[str, object]] = {}
for method in methods:
    spec = get_method(method)
    usable = spec.min_inputs <= len(chosen_refs) <= (spec.max_inputs or len(chosen_refs))
    with st.expander(f"{method} · {spec.help}", expanded=method == "isolation"):
        if not usable:
            st.caption(f"Needs between {spec.min_inputs} and {spec.max_inputs} adapters: skipped for this set.")
        params[method] = {p.name: control(method, p) for p in spec.params}
        if not spec.params:
            st.caption("No parameters.")
methods = [m for m in methods
           if get_method(m).min_inputs <= len(chosen_refs) <= (get_method(m).max_inputs or len(chosen_refs))]


def merge_key(method: str) -> cache.MergeKey:
    return (chosen_refs, method, tuple(sorted(params[method].items())), weights)


# 3. Preview settings
st.subheader("3 · Compare")
a, b, c = st.columns(3)
rank_in = a.number_input("Export rank R (0 = exact, no re-factoring)", min_value=0, max_value=4096, value=0,
                         step=1, key="merge_rank", help="Dense results (TIES, DARE, entry isolation) need R > 0 "
                                                        "for PEFT/kohya export; the preview reports the rank-R error.")
rank = int(rank_in) or None
granularity = b.selectbox("Core unit for the diagnostics", ["entries", "rows", "columns"], key="merge_core_unit")
core_p = c.number_input("Core fraction p", min_value=0.0001, max_value=1.0, value=0.01, format="%.4g",
                        key="merge_core_p")

if st.button("Compare methods", type="primary", key="merge_compare"):
    st.session_state["merge_compared"] = True
if not st.session_state.get("merge_compared") or not methods:
    st.info("Choose methods and press **Compare methods**: each is merged and previewed (cached afterwards).")
    st.stop()

bar = st.progress(0.0, text="Merging…")
previews: dict[str, dict] = {}
for i, method in enumerate(methods):
    bar.progress(i / len(methods), text=f"Merging and previewing {method} ({i + 1}/{len(methods)})…")
    try:
        previews[method] = cache.merge_preview(merge_key(method), rank, granularity, float(core_p))
    except AtlasError as exc:
        st.error(f"{method}: {exc}")
bar.progress(1.0, text=f"{len(previews)} method(s) compared")
if not previews:
    st.stop()

rows = []
for method, pv in previews.items():
    export = pv["export"]
    for task, s in pv["per_task"].items():
        rows.append({"method": method, "task": task, **{METRIC_COLUMNS[k][0]: s[k] for k in METRIC_COLUMNS},
                     "export error @R": export["relative_error"],
                     "needs --rank": export["needs_rank"]})
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={**{label: st.column_config.NumberColumn(label, help=h, format="%.3f")
                               for label, h in METRIC_COLUMNS.values() if label != "conflicts"},
                            "export error @R": st.column_config.NumberColumn(
                                help="relative Frobenius error of the rank-R re-factoring (0 without R if exact)",
                                format="%.4f")})
with st.container(horizontal=True):
    st.download_button("Table (CSV)", table.to_csv(index=False), file_name="merge_comparison.csv",
                       mime="text/csv", key="merge_csv", on_click="ignore")
    st.download_button("Previews (JSON)", json.dumps(previews, indent=1, default=float),
                       file_name="merge_previews.json", mime="application/json", key="merge_json", on_click="ignore")

metric = st.radio("Chart", [k for k in METRIC_COLUMNS if k != "conflicts"], horizontal=True, key="merge_chart",
                  format_func=lambda k: METRIC_COLUMNS[k][0])
fig = go.Figure([go.Bar(name=method, x=list(pv["per_task"]), y=[s[metric] for s in pv["per_task"].values()],
                        hovertemplate=f"{method}<br>task %{{x}}<br>{METRIC_COLUMNS[metric][0]} %{{y:.3f}}<extra></extra>")
                 for method, pv in previews.items()])
fig.update_layout(barmode="group", title=f"{METRIC_COLUMNS[metric][0]} per task and method",
                  yaxis_title=METRIC_COLUMNS[metric][0], xaxis_title="task (input adapter)", legend_title="method")
show_figure(fig, name=f"merge_{metric}", key="merge_metric_chart")

iso = previews.get("isolation", {}).get("method_info")
if iso:
    st.markdown("**Isolation: task groups and conflicts**")
    claims = iso["claims"]
    x, y, z = st.columns(3)
    x.metric("Groups", len(set(iso["groups"])), help=f"group per adapter: {dict(zip(chosen, iso['groups']))}")
    y.metric("Conflicting positions", f"{claims['conflicts']:,}",
             help=f"resolved by the '{params['isolation']['conflict']}' policy")
    z.metric("Transplanted positions", f"{claims['sole']:,}", help=f"of {claims['positions']:,} positions")
    jac = go.Figure(go.Heatmap(z=iso["jaccard"], x=list(chosen), y=list(chosen), zmin=0, zmax=1,
                               colorscale="Viridis", texttemplate="%{z:.3f}",
                               hovertemplate="%{y} / %{x}<br>Jaccard of cores %{z:.3f}<extra></extra>"))
    jac.update_layout(title="Jaccard overlap of core regions (grouped when ≥ τ)", yaxis_autorange="reversed")
    show_figure(jac, name="isolation_jaccard", key="merge_jaccard")

# 4. Real accuracy on the sample set
st.subheader("4 · Real accuracy (sample set)")
tasks = cache.sample_tasks()
if not tasks:
    st.caption("The sample set (sample_adapters/tasks) is not on disk: real accuracy is unavailable here.")
else:
    t1, t2 = st.columns([3, 1])
    picked = t1.multiselect("Tasks", tasks, default=tasks, key="merge_tasks")
    limit = int(t2.number_input("Examples per task", min_value=1, max_value=10_000, value=32, key="merge_limit"))
    if st.button("Measure real accuracy", key="merge_measure"):
        st.session_state["merge_measured"] = True
    if st.session_state.get("merge_measured") and picked:
        jobs = [("merge", m) for m in previews] + [("input", ref) for ref in chosen_refs]
        bar = st.progress(0.0, text="Evaluating…")
        acc_rows = []
        try:
            for i, (kind, item) in enumerate(jobs):
                label = item if kind == "merge" else item[2]
                row = {"model": f"merge: {label}" if kind == "merge" else f"adapter: {label}"}
                for task in picked:
                    bar.progress(i / len(jobs), text=f"{row['model']} on {task}…")
                    row[task] = (cache.merged_accuracy(merge_key(item), task, limit) if kind == "merge"
                                 else cache.adapter_accuracy(item, task, limit))
                acc_rows.append(row)
            bar.progress(1.0, text=f"Evaluated {len(jobs)} models on {len(picked)} task(s), {limit} examples each")
            acc = pd.DataFrame(acc_rows)
            st.dataframe(acc, hide_index=True, width="stretch",
                         column_config={t: st.column_config.NumberColumn(format="%.3f") for t in picked})
            st.download_button("Accuracy (CSV)", acc.to_csv(index=False), file_name="merge_accuracy.csv",
                               mime="text/csv", key="merge_acc_csv", on_click="ignore")
        except AtlasError as exc:
            st.error(str(exc))

# 5. Export
st.subheader("5 · Export")
e1, e2 = st.columns(2)
export_method = e1.selectbox("Method to export", list(previews), key="merge_export_method")
fmt = e2.selectbox("Format", ["peft", "kohya", "delta"], key="merge_format",
                   help="peft: a directory PeftModel.from_pretrained loads; kohya: SD-style LoRA file; "
                        "delta: full dW per module (holds any result exactly).")
if previews[export_method]["export"]["needs_rank"] and fmt != "delta" and rank is None:
    st.warning(f"{export_method} gives dense updates with these parameters: set an export rank R above, "
               "or choose the delta format.")
elif st.button("Build export", key="merge_build"):
    st.session_state["merge_built"] = True
if st.session_state.get("merge_built"):
    try:
        built = cache.merge_export(merge_key(export_method), fmt, rank, granularity, float(core_p))
    except AtlasError as exc:
        st.error(str(exc))
        st.stop()
    with st.container(horizontal=True):
        st.download_button("Download export (zip)", built["zip"], file_name=f"{built['name']}.zip",
                           mime="application/zip", key="merge_zip", on_click="ignore", type="primary")
        st.download_button("Recipe (YAML)", built["recipe_yaml"], file_name="recipe.yaml", mime="text/yaml",
                           key="merge_recipe", on_click="ignore")
    st.code(built["recipe_yaml"], language="yaml")
    st.caption("Replay anywhere with `adapter-atlas merge --recipe recipe.yaml --out DIR` (inputs are checked "
               "against their sha256).")
    try:
        from analysis.review import propose
        from analysis.review.store import resolve_db_url
    except ImportError:
        propose = None
    if propose is not None:
        with st.form("merge_propose_form"):
            title = st.text_input("Proposal title", value=f"Merge {', '.join(chosen)} with {export_method}",
                                  key="merge_prop_title")
            author = st.text_input("Author", key="merge_prop_author")
            submitted = st.form_submit_button("Propose this merge")
        if submitted:
            try:
                if not author.strip():
                    raise AtlasError("a proposal needs an author")
                pid = propose(cache.review_store(resolve_db_url()), built["recipe"], title, author,
                              preview=built["preview"])
                st.success(f"Proposal #{pid} opened: see the Review page.")
            except AtlasError as exc:
                st.error(str(exc))


# --- Plan and consolidation (issue 11; the section lives in app/components/plan_view.py) ---------------------
from app.components import plan_view  # noqa: E402

st.divider()
plan_view.render()
