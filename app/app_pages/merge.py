"""Merge, top to bottom as the work goes: choose adapters and methods -> compare them data-free -> measure them
on a model and data -> decide (export one, propose it for review with the decision table frozen in).

Every number here comes from `analysis.workflow.run_merge` (through `app.cache`), the pipeline the CLI
and the review use, so the page, `adapter-atlas merge` and a review report agree.
"""
from __future__ import annotations

import json
import shlex
import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.errors import AtlasError
from analysis.export.recipe import EXPORT_FORMATS
from analysis.merge import METHODS, get_method
from analysis.merge.registry import Param
from analysis.workflow.evidence import METRIC_HELP, METRIC_LABELS, export_line, module_line
from analysis.workflow.progress import format_eta
from analysis.workflow.rank import DEFAULT_TARGET_ERROR
from app import cache
from app.components import estimate_view, merge_measure, proposal_decision, view
from app.components.display import show_figure

STARTING_METHODS = ["isolation", "linear", "ties"]
CORE_PARAMS = ("granularity", "p")  # one set of core controls: a method's own cores are the preview's cores
COLUMNS = {k: METRIC_LABELS[k] for k in ("core_retention", "interference", "cosine", "conflicts")}
STAGES = {"merge": (0.0, 0.45), "export rank": (0.45, 0.6), "preview": (0.6, 1.0), "done": (1.0, 1.0)}

st.title("Merge")
st.caption("Isolation merging (Wang, Liang & Peng 2025) keeps each task's core, the top p of its parameters by "
           "|dW|, and blends the rest. **1** choose adapters and methods, **2** compare the merges data-free, "
           "**3** measure them on your model and data against a bar, **4** export the one that passes and propose "
           "it: the proposal carries the measured table to the reviewer.")

refs, _ = view.adapter_set(minimum=2)
names = [ref[2] for ref in refs]

# 1. Choose: the whole open set (as handed over), or on the server's default set the three that collide most
st.subheader("1 · Choose adapters and methods")
open_set = list(st.session_state.get(view.ADAPTERS, []))
handed = st.session_state.get("merge_seen_set") not in (None, open_set)  # the set changed on another page
st.session_state["merge_seen_set"] = open_set
if handed and "merge_inputs" in st.session_state and not view.linked("merge"):
    lost = [n for n in st.session_state["merge_inputs"] if n not in names]
    st.session_state["merge_inputs"] = list(names)  # a new set arrives whole
    st.caption(f"The open set changed on another page: all {len(names)} of its adapters are selected."
               + (f" No longer open, so dropped: {', '.join(lost)}." if lost else ""))
start = list(range(len(refs)))
if "merge_inputs" not in st.session_state and not view.linked("merge") and len(refs) > 3 and view.is_default_set():
    from analysis.workflow import most_overlapping

    view.overlap_table(refs)
    start = most_overlapping(cache.aggregated(refs, "subspace_similarity", None, None), 3)
    st.caption(f"The server's default set is open ({len(refs)} adapters): starting with the {len(start)} whose "
               "updates overlap most, where a merge matters. Add the others below.")
chosen = view.choose_many("Adapters to merge", names, "merge_inputs", param="merge",
                          default=[names[i] for i in start],
                          help="Every adapter of the open set (Adapters page) can be merged; on the server's default "
                               "set the page starts with the three that overlap most.")
chosen_refs = tuple(ref for ref in refs if ref[2] in chosen)  # the set's order is the merge's order
if len(chosen_refs) < 2:
    st.info("Pick at least two adapters.")
    st.stop()
st.caption("Merged in this order: " + ", ".join(f"{i + 1}. {ref[2]}" for i, ref in enumerate(chosen_refs)))
weights: tuple[float, ...] | None = None
if st.toggle("Custom weights", key="merge_custom_weights",
             help="Off: each method's own default (1/N for mean-type methods, 1 for sums)."):
    cols = st.columns(len(chosen_refs))
    weights = tuple(float(col.number_input(ref[2], value=1.0, step=0.1, key=f"merge_w_{ref[2]}"))
                    for col, ref in zip(cols, chosen_refs))
drop_extras = st.toggle("Drop extras", key="merge_drop_extras",
                        help="Inputs' non-LoRA tensors (classifier heads, DoRA magnitudes, LoRA biases) are carried "
                             "into the export when identical; when they differ the export is refused unless they "
                             "are dropped (recorded in the recipe). The comparison below runs either way.")


# 2. Methods: one line each; one set of core controls; the rest from each method's declaration
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


methods = view.choose_many("Methods to compare", sorted(METHODS), "merge_methods", param="method",
                           default=[m for m in STARTING_METHODS if m in METHODS])
for m in methods:
    st.markdown(f"- **{m}**: {get_method(m).help}")
iso = get_method("isolation")
a, b = st.columns(2)
with a:
    granularity = view.choose("Core unit", list(iso.param("granularity").choices or ()), "merge_core_unit",
                              param="cores", help=iso.param("granularity").help)
view.url_state("merge_core_p", "p", default=float(iso.param("p").default), kind=float)
core_p = float(b.number_input("Core fraction p", min_value=0.0001, max_value=1.0, format="%.4g",
                              key="merge_core_p", help=iso.param("p").help + " (also the preview's cores)"))
params: dict[str, dict[str, object]] = {}
for m in methods:
    spec = get_method(m)
    own = [p for p in spec.params if not (spec.cores and p.name in CORE_PARAMS)]
    params[m] = {"granularity": granularity, "p": core_p} if spec.cores else {}
    if own:
        with st.expander(f"{m} settings"):
            params[m].update({p.name: control(m, p) for p in own})
usable = [m for m in methods
          if get_method(m).min_inputs <= len(chosen_refs) <= (get_method(m).max_inputs or len(chosen_refs))]
for m in sorted(set(methods) - set(usable)):
    st.caption(f"{m} takes between {get_method(m).min_inputs} and {get_method(m).max_inputs} adapters: skipped.")


def merge_key(method: str) -> cache.MergeKey:
    return cache.MergeKey(chosen_refs, method, tuple(sorted(params[method].items())), weights,
                          (str(granularity), core_p), "drop" if drop_extras else "carry")


# 2. Compare, data-free, with progress (ETA) and a cancel button; results the server holds show without a click
st.subheader("2 · Compare (data-free)")
go_col, stop_col = st.columns([1, 1])
if go_col.button("Compare methods", type="primary", key="merge_compare"):
    st.session_state["merge_compared"] = True
if stop_col.button("Cancel", key="merge_cancel",
                   help="Stops the running comparison at the next module; merges that already finished are kept "
                        "for the next Compare."):
    st.session_state["merge_compared"] = False
    st.info("Comparison cancelled.")
keys = {method: merge_key(method) for method in usable}
if "merge_compared" not in st.session_state and usable and all(cache.merge_ready(k) for k in keys.values()):
    st.session_state["merge_compared"] = True  # a link to results the server still holds shows them
if not st.session_state.get("merge_compared") or not usable:
    st.info("Choose adapters and methods, then press **Compare methods**. Finished results stay on the server "
            "for a while: this page's link shows them again without recomputing.")
    st.stop()

runs: dict[str, object] = {}
status: dict[str, tuple[str, int, int, float | None]] = {}  # method -> (stage, done, total, eta), from the workers
todo = [k for k in keys.values() if not cache.merge_ready(k)]  # the merges this run computes
bar = None if not todo else st.progress(0.0, text="Merging…")


def on_progress(key: cache.MergeKey, stage: str, done: int, total: int, eta: float | None, label: str) -> None:
    status[key.method] = (stage, done, total, eta)  # bookkeeping only: widgets belong to the script's thread


def redraw() -> None:
    """Overall share done, and each running method's stage; called from this thread while merges run."""
    if bar is None:
        return
    fracs, lines, etas = [], [], []
    for method in usable:
        if cache.merge_ready(keys[method]):
            fracs.append(1.0)
            continue
        stage, done, total, eta = status.get(method, ("waiting", 0, 1, None))
        lo, hi = (0.0, 0.0) if stage == "waiting" else STAGES.get(stage, (0.0, 1.0))
        fracs.append(lo + (hi - lo) * done / max(total, 1))
        if stage not in ("waiting", "done"):
            lines.append(f"{method}: {stage} {done}/{total}")
            etas.append(eta)
    left = format_eta(max(etas)) if etas and all(e is not None for e in etas) else ""
    bar.progress(min(sum(fracs) / max(len(fracs), 1), 1.0), text=" · ".join(lines + [left]) or "Merging…")


started = time.monotonic()
for key, value in cache.merge_runs(list(keys.values()), on_progress, redraw).items():
    if isinstance(value, AtlasError):
        st.error(f"{key.method}: {value}")
    else:
        runs[key.method] = value
if bar is not None:
    bar.empty()
    from analysis.workflow.parallel import default_workers

    st.caption(f"Merged and previewed {len(todo)} method(s) in {time.monotonic() - started:.1f} s "
               f"({default_workers(len(todo))} at a time, one per core).")
if not runs:
    st.stop()
order = list(runs[next(iter(runs))].adapters.names)  # the merge's order, for every label below

rows = []
for method, run in runs.items():
    ev = run.evidence
    for t in ev["tasks"]:
        rows.append({"method": method, "task": t["name"], **{label: t[k] for k, label in COLUMNS.items()},
                     "predicted retention": estimate_view.cell(t),
                     "export rank": ev["export"]["rank"] or "exact",
                     "export error": ev["export"]["relative_error"]})
table = pd.DataFrame(rows)
for col in table.columns:  # an undefined metric (e.g. a zero update) reads as a dash, never "None"
    if table[col].isna().any():
        table[col] = [("—" if pd.isna(v) else f"{v:.3f}") for v in table[col]]
table["export rank"] = table["export rank"].astype(str)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={**{label: st.column_config.NumberColumn(label, help=METRIC_HELP[k], format="%.3f")
                               for k, label in COLUMNS.items() if k != "conflicts"},
                            "conflicts": st.column_config.NumberColumn(help=METRIC_HELP["conflicts"]),
                            "predicted retention": st.column_config.TextColumn(
                                help="expected exact-match accuracy over the task's own adapter, from the weights "
                                     "alone, with its 90% interval; its track record is under the table"),
                            "export rank": st.column_config.TextColumn(
                                help="rank of the PEFT adapter written (exact: the merge is low rank as it is)"),
                            "export error": st.column_config.NumberColumn(
                                help="relative Frobenius error of the written adapter vs the exact merge",
                                format="%.4f")})
st.caption(module_line(runs[next(iter(runs))].evidence) or "")
estimate_view.show_track_record(key="merge_estimate_scatter")
with st.container(horizontal=True):
    st.download_button("Table (CSV)", table.to_csv(index=False), file_name="merge_comparison.csv",
                       mime="text/csv", key="merge_csv", on_click="ignore")
    st.download_button("Evidence (JSON)", json.dumps({m: r.evidence for m, r in runs.items()}, indent=1, default=float),
                       file_name="merge_evidence.json", mime="application/json", key="merge_json", on_click="ignore")

# Charts: one metric per task and method; isolation's groups and core overlap, in the merge's order
metric = st.radio("Chart", [k for k in COLUMNS if k != "conflicts"], horizontal=True, key="merge_chart",
                  format_func=lambda k: COLUMNS[k])
fig = go.Figure([go.Bar(name=m, x=[t["name"] for t in r.evidence["tasks"]],
                        y=[t[metric] for t in r.evidence["tasks"]],
                        hovertemplate=f"{m}<br>task %{{x}}<br>{COLUMNS[metric]} %{{y:.3f}}<extra></extra>")
                 for m, r in runs.items()])
fig.update_layout(barmode="group", title=f"{COLUMNS[metric]} per task and method", yaxis_title=COLUMNS[metric],
                  xaxis_title="task (input adapter)", legend_title="method")
show_figure(fig, name=f"merge_{metric}", key="merge_metric_chart")

info = runs["isolation"].evidence["method_info"] if "isolation" in runs else None
if info:
    st.markdown("**Isolation: task groups and conflicts**")
    claims = info["claims"]
    x, y, z = st.columns(3)
    x.metric("Groups", len({g for g in info["groups"] if g != -1}),  # -1: weight-0 inputs, in no group
             help="; ".join(f"{n}: " + ("weight 0, not merged" if g == -1 else f"group {g}")
                            for n, g in zip(order, info["groups"])))
    y.metric("Conflicting positions", f"{claims['conflicts']:,}",
             help=f"resolved by the '{params['isolation'].get('conflict', 'magnitude')}' policy")
    z.metric("Transplanted positions", f"{claims['sole']:,}", help=f"of {claims['positions']:,} positions")
    jac = go.Figure(go.Heatmap(z=info["jaccard"], x=order, y=order, zmin=0, zmax=1, colorscale="Viridis",
                               texttemplate="%{z:.3f}",
                               hovertemplate="%{y} / %{x}<br>Jaccard of cores %{z:.3f}<extra></extra>"))
    jac.update_layout(title="Jaccard overlap of core regions (grouped when ≥ τ)", yaxis_autorange="reversed",
                      xaxis_title="adapter", yaxis_title="adapter")
    show_figure(jac, name="isolation_jaccard", key="merge_jaccard")

# 3. Measure: every merge as written, each input and the base, on a model and data the visitor picks
st.subheader("3 · Measure (your model and data)")
measurement = merge_measure.render(runs, merge_key, order)

# 4. Decide: export one merge (changing the rank reads the fidelity from the stored spectrum) and propose it
st.subheader("4 · Decide: export and propose")
if measurement is None or not measurement.blocks:
    st.warning("Nothing is measured yet (section 3): a proposal made now carries only the data-free comparison, "
               "and its reviewer sees that no retention was measured.")
e1, e2, e3, e4 = st.columns(4)
export_method = e1.selectbox("Method to export", list(runs), key="merge_export_method")
fmt = e2.selectbox("Format", list(EXPORT_FORMATS), key="merge_format",
                   help="peft: a directory PeftModel.from_pretrained loads; diffusers: pipe.load_lora_weights; "
                        "kohya: SD-style LoRA file (A1111/Forge, ComfyUI); delta: full dW per module (exact).")
dtype = e4.selectbox("Dtype", ["fp32", "fp16", "bf16"], key="merge_dtype",
                     help="stored precision; the storage error of the file written is shown after Build export")
run = runs[export_method]
auto_rank = run.rank
widest = run.max_rank  # the pipeline supports any rank up to the module width (above the cap: merged again)
cap = min(run.spectrum.cap, widest) if run.spectrum is not None else widest  # summed input rank (weight > 0)
if run.evidence["export"]["rank_mode"] == "exact":
    widest = cap  # an exactly low-rank merge is never wider than the cap: higher ranks add nothing
ranks = sorted({r for r in (4, 8, 16, 32, 64, 128, 256, 512) if r <= widest} | {cap})
rank_text = view.choose("Rank", ["automatic"] + [str(r) for r in ranks], "merge_rank", widget=e3.selectbox,
                         help=f"automatic: exact when the merge is low rank, else the smallest rank whose relative "
                              f"error is at most {DEFAULT_TARGET_ERROR}, never above the cap ({cap}, the summed "
                              f"rank of the inputs with non-zero weight). Ranks above the cap merge the inputs "
                              f"again at that rank (slower; larger adapter).",
                         disabled=fmt == "delta")
rank = None if rank_text == "automatic" or fmt == "delta" else int(rank_text)
shown = rank if rank is not None else auto_rank
above_cap = fmt != "delta" and rank is not None and run.spectrum is not None and rank > run.spectrum.cap
fid = run.fidelity(min(shown, run.spectrum.cap) if above_cap else shown)
m1, m2 = st.columns(2)
m1.metric("Rank written", "exact" if shown is None or fmt == "delta" else shown)
m2.metric("Relative error", "after Build export" if above_cap else
          f"{(0.0 if fmt == 'delta' else fid['relative_error']):.4f}",
          help="||dW_written − dW_merge||_F / ||dW_merge||_F over all modules")
is_built = st.session_state.get("merge_built") == (export_method, fmt, rank, dtype)
if rank is None and not is_built:  # once built, the line under the downloads says it
    st.caption(export_line(run.evidence) or "")
ex = run.evidence["export"]
if fmt != "delta" and rank is None and ex.get("rank_mode") == "auto" and ex.get("reached") is False:
    st.warning(f"The automatic rank did not reach its target (relative error ≤ {ex.get('target_error')}): it stops at "
               f"the cap, rank {ex.get('cap')}, with error {ex.get('relative_error', 0.0):.4f}. Pick a higher rank "
               "(the inputs are merged again at it) or the delta format (exact).")
refused = run.evidence["extras"].get("refused")
if refused and fmt == "peft":
    st.warning(f"This export would be refused: {refused}. Turn on **Drop extras** (section 1) to export without "
               "them; the comparison above does not depend on it.")
carried = proposal_decision.render(export_method, fmt, rank, merge_key, measurement, dtype)
if st.button("Build export", key="merge_build"):
    st.session_state["merge_built"] = (export_method, fmt, rank, dtype)
    st.rerun()  # the summary line above is then left to the built export's line below: printed once
if is_built:
    try:
        with st.spinner("Writing the export and previewing the adapter written…"):
            name, data, recipe_yaml = cache.merge_zip(merge_key(export_method), fmt, rank, dtype)
            built = cache.merge_export(merge_key(export_method), fmt, rank, dtype=dtype)
    except AtlasError as exc:
        st.error(str(exc))
        st.stop()
    with st.container(horizontal=True):
        st.download_button("Download export (zip)", data, file_name=f"{name}.zip", mime="application/zip",
                           key="merge_zip", on_click="ignore", type="primary")
        st.download_button("Recipe (YAML)", recipe_yaml, file_name="recipe.yaml", mime="text/yaml",
                           key="merge_recipe", on_click="ignore")
    st.caption(export_line(built.evidence) or "")
    with st.expander("Recipe"):
        st.code(recipe_yaml, language="yaml")
with st.form("merge_propose_form"):
    title = st.text_input("Proposal title", value=f"Merge {', '.join(order)} with {export_method}",
                          key="merge_prop_title")
    author = st.text_input("Author", key="merge_prop_author", value=view.author())
    submitted = st.form_submit_button("Propose this merge", type="primary")
if submitted:
    from analysis.review.propose import propose_merge
    from analysis.review.store import resolve_db_url

    try:
        if not author.strip():
            raise AtlasError("a proposal needs an author")
        st.session_state[view.AUTHOR] = author.strip()  # the Review page signs with the same name
        proposed = proposal_decision.proposed(export_method, fmt, rank, merge_key, measurement, dtype)
        pid = propose_merge(cache.review_store(resolve_db_url()), proposed, title, author)
        st.success(f"Proposal #{pid} opened" + (" with its measured decision table" if carried else
                                                  " without measured rows") + ".")
        st.page_link("app_pages/review.py", label=f"Open proposal #{pid} on the Review page",
                     icon=":material/rate_review:", query_params={"proposal": str(pid)})
    except AtlasError as exc:
        st.error(str(exc))

# --- Plan and consolidation (issue 11; the section lives in app/components/plan_view.py) ---------------------
from app.components import plan_view  # noqa: E402

st.divider()
st.subheader("Plan your selection", anchor=False)
from app.components import plan_selection  # noqa: E402

plan_selection.render(chosen_refs, measurement.bar if measurement else 0.9)
st.caption("With task data the CLI verifies every group by real accuracy (minutes):")
st.code("adapter-atlas plan " + " ".join(shlex.quote(str(ref[0])) for ref in chosen_refs)
        + f" --min-retention {measurement.bar if measurement else 0.9:g} --data DATA --out plan/", language="bash")
st.info("**Stored example, not your selection.** Below: the benchmark plan of all ten sample adapters "
        "(bench/results_consolidate.json) unless you name a plan.json.", icon=":material/inventory_2:")
plan_view.render()
