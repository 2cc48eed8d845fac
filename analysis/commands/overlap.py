"""`adapter-atlas overlap PATH PATH... [--json] [--modules REGEX]`: all-pairs overlap per shared module.

JSON (stdout): {"adapters": [names], "modules": {module: {norm, cosine, subspace_similarity,
input_subspace_similarity, principal_angles_deg, mean_angle_deg, energy_overlap, rank, spectra}},
"aggregate": {metric: N x N}, "module_policy": {policy, rule, total, shared, not_shared, left_out_energy}}.
Without --json, a readable pair table. Progress goes to stderr.

Module rule: overlap is compared on the modules every input has (a pair has no overlap where one side is
absent); the modules some input lacks are named in the summary with each input's share of energy in them
(`analysis.workflow.coverage`), or refused with `--missing-modules refuse`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from analysis.adapters import Adapter
from analysis.errors import IncompatibleAdaptersError
from analysis.overlap import METRICS, ModuleOverlap, aggregate, overlap_table


def adapter_names(paths: Sequence[Path]) -> list[str]:
    """Display names as every face shows them (`analysis.workflow.display_names`)."""
    from analysis.workflow import display_names

    return display_names(paths)


def load_named(paths: Sequence[str], *, minimum: int = 2) -> list[Adapter]:
    """Load every input with a distinct display name (`AdapterSet`); a missing path is one clear error."""
    from analysis.workflow import AdapterSet

    if len(paths) < minimum:
        raise IncompatibleAdaptersError(f"need at least {minimum} adapters to compare, got {len(paths)}")
    return list(AdapterSet.from_paths(paths).adapters)


def limit_threads() -> None:
    """One intra-op thread unless the user chose (OMP_NUM_THREADS): the factored math is many small
    (d, r) and (r, r) products, where OpenMP threads only add overhead, and on a busy machine their
    spin-waiting made the 16 x 16 x 4096 benchmark 6x slower (64 s vs 11 s)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def compute_table(adapters: Sequence[Adapter], modules_regex: str | None) -> dict[str, ModuleOverlap]:
    """overlap_table with a tqdm bar on stderr (shown only when stderr is a terminal)."""
    with tqdm(total=0, desc="overlap", unit="module", file=sys.stderr, disable=None, leave=False) as bar:
        def progress(done: int, total: int, module: str) -> None:
            bar.total = total
            bar.update(1)

        return overlap_table(adapters, modules_regex=modules_regex, progress=progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "overlap", help="per-layer overlap between all pairs of adapters",
        description="Cosine, subspace similarity (Hu et al.), principal angles and energy overlap "
                    "for every pair of adapters on every module they share, from the low-rank factors.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="adapter directories or files (two or more)")
    p.add_argument("--json", action="store_true", help="print the full per-module tables as JSON")
    p.add_argument("--modules", default=None, metavar="REGEX", help="only modules whose name matches (re.search)")
    p.add_argument("--missing-modules", default="shared", choices=("shared", "refuse"),
                   help="modules not every input has: shared: compare on the shared modules and list the others "
                        "(default); refuse: stop when the inputs do not all have the same modules")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from analysis.workflow.coverage import module_coverage

    limit_threads()
    adapters = load_named(args.paths)
    coverage = module_coverage(adapters, args.missing_modules)  # `refuse`: one line naming them
    table = compute_table(adapters, args.modules)
    names = [a.name for a in adapters]
    agg = {m: aggregate(table, m) for m in METRICS}
    if args.json:
        payload = {
            "adapters": names,
            "modules": {m: {k: v for k, v in mo.to_json().items() if k != "adapters"} for m, mo in table.items()},
            "aggregate": {m: a.tolist() for m, a in agg.items()},
            "module_policy": {**coverage.summary(), "rule": OVERLAP_RULE},
        }
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(_summary(names, table, agg))
    sys.stdout.write(_policy(coverage) + "\n")
    return 0


OVERLAP_RULE = "compared on the modules every input has; the others are listed, not compared"


def _policy(coverage) -> str:  # noqa: ANN001 - analysis.workflow.coverage.Coverage
    """The module rule in one line, with each input's share of energy in the modules not compared."""
    if not coverage.missing:
        return _clean(coverage.line())
    energy = ", ".join(f"{_clean(n)} {e:.1%}" for n, e in zip(coverage.names, coverage.left_out_energy))
    return _clean(coverage.line(f"not compared (compared on the {len(coverage.shared)} shared modules; "
                                f"energy not compared: {energy})"))


def _clean(text: str) -> str:
    """Names come from file names: keep control characters out of the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _summary(names: list[str], table: dict[str, ModuleOverlap], agg: dict[str, np.ndarray]) -> str:
    n = len(names)
    lines = [f"{n} adapters, {len(table)} shared modules (energy-weighted over modules; subspace = output space)", ""]
    width = max([12] + [len(_clean(names[i])) + len(_clean(names[j])) + 4 for i in range(n) for j in range(i + 1, n)])
    lines.append(f"{'pair':<{width}} {'cosine':>8} {'subspace':>9} {'angle°':>7} {'energy→':>8} {'energy←':>8}")
    for i in range(n):
        for j in range(i + 1, n):
            pair = f"{_clean(names[i])} vs {_clean(names[j])}"
            lines.append(
                f"{pair:<{width}} {agg['cosine'][i, j]:>8.4f} {agg['subspace_similarity'][i, j]:>9.4f} "
                f"{agg['mean_angle_deg'][i, j]:>7.2f} {agg['energy_overlap'][i, j]:>8.4f} {agg['energy_overlap'][j, i]:>8.4f}")
    # the modules where some pair collides most, by output subspace similarity
    off = ~np.eye(n, dtype=bool)
    top = sorted(table.items(), key=lambda kv: -float(kv[1].subspace_similarity[off].max(initial=0.0)))[:5]
    lines += ["", "most overlapping modules (max subspace similarity over pairs):"]
    for m, mo in top:
        lines.append(f"  {_clean(m)}: {float(mo.subspace_similarity[off].max(initial=0.0)):.4f}")
    lines.append("energy→: share of the first adapter's energy in the second's column spaces; energy←: the reverse")
    return "\n".join(lines) + "\n"
