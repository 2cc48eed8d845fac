"""Fit the retention estimate on measured merges and say how well it predicts (seconds; `make bench`).

Reads the ground truth of `bench/retention_truth.py` (bench/results_retention_truth.json), fits
`analysis.predict.calibrate` for each basis (data-free: weights, and reach on a loaded model, `analysis.reach`;
data-light: module inputs on unlabeled prompts) on
two thirds of the MERGES (every task of a merge on the same side: a merge's tasks share its geometry) and reports
on the held-back third: rank correlation (Spearman) and mean absolute error against measured exact-match retention,
the rank correlation against the NLL-based retention, and, for comparison on the same held-back trials, the rank
correlation of simpler signals (the cosine between the merged update and the task's own, the best-fitting scale
alone), and the data-light agreement on outputs (measured by `bench/retention_truth.py`: does the merge reproduce the own
adapter's greedy answers on unlabeled prompts; no fit, the agreement is the estimate, its interval the held-back
90% quantile of the error, shipped as the `outputs` calibration the faces' data-light estimate uses). With --write the fit becomes analysis/data/retention_calibration.json, what the tool ships.

    python bench/retention_fit.py [--truth bench/results_retention_truth.json] [--write]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from analysis.predict import CALIBRATION, OUTPUTS, REACH, Signal, calibrate, spearman  # noqa: E402
from analysis.reach import PROBE_SEQS, PROBE_TOKENS, ReachSignal  # noqa: E402

BASES = (("data-free", "data_free"), ("data-light", "data_light"))


def heldout(merge_id: str, rotation: int = 0) -> bool:
    """A fixed third of the merges, by id (a hash of the merge's spec): never chosen by looking at results. The
    shipped fit holds back rotation 0; rotations 1 and 2 (the other thirds) say how much the record depends on it."""
    return int(merge_id, 16) % 3 == rotation


def fit(truth: dict[str, Any], rotation: int = 0) -> dict[str, Any]:
    rows = [(m, t) for m in truth["merges"] for t in m["tasks"] if t["retention_em"] is not None]
    held = [heldout(m["id"], rotation) for m, _ in rows]
    measured_on = (f"{truth['summary'].get('measured_on', 'sample set')}; exact match on "
                   f"{truth['protocol']['em_rows']} rows; {len(truth['merges'])} merges, {len(rows)} task trials")
    y = [t["retention_em"] for _, t in rows]
    out: dict[str, Any] = {"calibrations": {}, "baselines": {}, "n_merges": len(truth["merges"]),
                           "n_trials": len(rows), "n_heldout": sum(held)}
    def fitted(signals: list[Any], basis: str, on: str) -> dict[str, Any]:
        """The calibration's record, with its held-back rank correlation against NLL retention and its scatter."""
        cal = calibrate(signals, y, held, basis=basis, measured_on=on)
        rec = cal.record()
        pred = [cal.predict(s)[0] for s, h in zip(signals, held) if h]
        rec["spearman_heldout_vs_nll_retention"] = spearman(pred, [t["retention_nll"] for (_, t), h in
                                                                     zip(rows, held) if h])
        rec["heldout_points"] = [[round(p, 4), round(v, 4)] for p, v in  # (predicted, measured): the scatter
                                 zip(pred, [v for v, h in zip(y, held) if h])]
        return rec

    for basis, key in BASES:
        signals = [Signal(**t[key]) for _, t in rows]
        out["calibrations"][basis] = fitted(signals, basis, measured_on)
        hy = [v for v, h in zip(y, held) if h]
        hs = [s for s, h in zip(signals, held) if h]
        cos = [s.inner / math.sqrt(s.task2 * s.merged2) if s.task2 * s.merged2 > 0 else 0.0 for s in hs]
        out["baselines"][basis] = {"spearman_heldout_cosine": spearman(cos, hy),
                                   "spearman_heldout_scale": spearman([s.scale for s in hs], hy)}
    if rows and all(t.get("reach") for _, t in rows):  # data-free on a loaded model: reach on the base's own text
        out["calibrations"][REACH] = fitted(
            [ReachSignal(**t["reach"]) for _, t in rows], REACH,
            f"{measured_on}; reach on {PROBE_SEQS} x {PROBE_TOKENS} tokens the base model wrote (no task data)")
    if rows and all("output_agreement" in t for _, t in rows):  # data-light from outputs: the agreement itself
        est = [t["output_estimate"] if t.get("output_estimate") is not None else  # as Forecast computes it
               (min(1.0, t["output_agreement"] / t["own_agreement"]) if t["own_agreement"] else 0.0)  # older runs
               for _, t in rows]
        he = [e for e, h in zip(est, held) if h]
        hy = [v for v, h in zip(y, held) if h]
        err = [abs(a - b) for a, b in zip(he, hy)]
        out["calibrations"][OUTPUTS] = {
            "basis": "data-light (outputs)", "weights": [], "n_train": 0, "n_heldout": len(he),
            "halfwidth": float(np.quantile(err, 0.9)) if err else 1.0,  # 90% split-conformal, as for the others
            "spearman_heldout": spearman(he, hy), "mae_heldout": float(np.mean(err)) if err else float("nan"),
            "measured_on": measured_on + f"; {truth['protocol'].get('output_prompts', 16)} unlabeled train prompts per task",
            "spearman_all": spearman(est, y),
            "spearman_heldout_vs_nll_retention": spearman(he, [t["retention_nll"] for (_, t), h in zip(rows, held) if h]),
            "heldout_points": [[round(a, 4), round(b, 4)] for a, b in zip(he, hy)]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", default=str(REPO / "bench" / "results_retention_truth.json"))
    ap.add_argument("--write", action="store_true", help="ship the fit as analysis/data/retention_calibration.json")
    args = ap.parse_args(argv)
    if not Path(args.truth).is_file():  # that set's ground truth has not been measured: say so, fit nothing
        print(json.dumps({"truth": args.truth, "status": "not measured yet: make retention-truth (or shared-seed)"}))
        return 0
    raw = Path(args.truth).read_bytes()
    truth = json.loads(raw)
    result = fit(truth)
    thirds = [result] + [fit(truth, r) for r in (1, 2)]  # each third held back in turn: the record's spread
    result["rotations"] = {basis: {k: [round(f["calibrations"][basis][k], 4) for f in thirds]
                                   for k in ("spearman_heldout", "mae_heldout")}
                           for basis in result["calibrations"]}
    result["truth"] = {"file": str(Path(args.truth).relative_to(REPO)) if Path(args.truth).is_relative_to(REPO)
                       else args.truth, "sha256": hashlib.sha256(raw).hexdigest()}
    if args.write:
        CALIBRATION.parent.mkdir(parents=True, exist_ok=True)
        CALIBRATION.write_text(json.dumps({"source": "bench/retention_fit.py", "truth": result["truth"],
                                           "calibrations": result["calibrations"]}, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
