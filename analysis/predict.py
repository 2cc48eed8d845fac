"""Predicted retention: how much of a task a merge keeps, before anyone runs an evaluation.

Why not "1 - interference"? The old estimate read ||(dW_m - dW_t) V_t|| / ||dW_t V_t|| as lost function, so a
task's own adapter at half weight "lost" half of itself and an unrelated adapter that happens to share the task's
input subspace (adapters trained from one LoRA init share their A matrices) looked like a collision. Both are
questions of *how the merged update acts*, so the signal is split in two:

- **scale** c: the best-fitting multiple of the task's own update inside the merge,
  c = <M, T> / <T, T> (M the merged update, T the task's), pooled over the modules the task has;
- **residual** rho: what the merge adds that is not the task, relative to the task,
  rho = ||M - c T|| / ||T||, pooled the same way.

Data-free, the inner products are Frobenius ones on the weights (exact, factored). Data-light, they are taken on
the function: <M X, T X> with X the inputs each module sees on a few unlabeled prompts of the task (activations of
the base model), so only directions the task's inputs excite count. A calibration fitted on measured merges maps
(c, rho) to the expected exact-match retention (merged accuracy / own adapter's accuracy) with an interval;
`analysis/data/retention_calibration.json` holds it with the rank correlation and error it reached on held-back
merges, and on which set, so every estimate the tool shows carries its track record.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.adapters.model import Adapter, Delta, LowRankDelta

CALIBRATION = Path(__file__).resolve().parent / "data" / "retention_calibration.json"
EPS = 1e-12


@dataclass(frozen=True)
class Signal:
    """Pooled over a task's modules: sums of <M, T>, <T, T>, <M, M> (in weight or function space)."""

    inner: float
    task2: float
    merged2: float

    @property
    def scale(self) -> float:
        return self.inner / self.task2 if self.task2 > 0 else 0.0

    @property
    def residual(self) -> float:
        """||M - c T|| / ||T|| at the best-fitting c (what the merge adds that is not the task)."""
        if self.task2 <= 0:
            return 0.0
        c = self.scale
        return math.sqrt(max(self.merged2 - 2 * c * self.inner + c * c * self.task2, 0.0) / self.task2)

    def __add__(self, other: "Signal") -> "Signal":
        return Signal(self.inner + other.inner, self.task2 + other.task2, self.merged2 + other.merged2)


ZERO = Signal(0.0, 0.0, 0.0)


def _factors(d: Delta) -> tuple[torch.Tensor, torch.Tensor] | None:
    return d.factors(torch.float64) if isinstance(d, LowRankDelta) else None  # (n_out, r), (r, n_in)


def weight_signal(merged: Delta, task: Delta) -> Signal:
    """Frobenius <M, T>, ||T||^2, ||M||^2 of one module, factored when both are low rank."""
    from analysis.merge.ops import inner

    return Signal(inner(merged, task), task.frobenius_norm() ** 2, merged.frobenius_norm() ** 2)


def _apply(d: Delta, X: torch.Tensor) -> torch.Tensor:
    """dW x for every row x of X (T, n_in) -> (T, n_out), through the factors when low rank."""
    f = _factors(d)
    if f is not None:
        b, a = f
        return (X @ a.T) @ b.T  # (T, r) then (T, n_out)
    return X @ d.dense(torch.float64).T  # (T, n_out)


def function_signal(merged: Delta, task: Delta, X: torch.Tensor) -> Signal:
    """<M X, T X>, ||T X||^2, ||M X||^2 on the module's real inputs X (T, n_in)."""
    X = X.to(torch.float64)
    ym, yt = _apply(merged, X), _apply(task, X)  # (T, n_out) each
    return Signal(float((ym * yt).sum()), float((yt * yt).sum()), float((ym * ym).sum()))


def task_signals(inputs: Sequence[Adapter], merged: Mapping[str, Delta], *,
                 activations: Sequence[Mapping[str, torch.Tensor] | None] | None = None) -> list[Signal]:
    """One pooled Signal per input (by index): over the modules the input has and the merge wrote.
    `activations[i]`: {module: X (T, n_in)} for input i's prompts (data-light); None for a data-free signal."""
    out = []
    for i, a in enumerate(inputs):
        acts = activations[i] if activations is not None else None
        total = ZERO
        for name, t in a.modules.items():
            m = merged.get(name)
            if m is None:
                continue
            if acts is not None and name in acts:
                total = total + function_signal(m, t, acts[name])
            else:
                total = total + weight_signal(m, t)
        out.append(total)
    return out


# ------------------------------------------------------------------ activations (data-light)

def capture_inputs(model: Any, tokenizer: Any, modules: Sequence[str], prompts: Sequence[str], *,
                   max_tokens: int = 256, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The inputs X (T, n_in) each named module of the BASE model sees on the prompts' real tokens (padding
    dropped), at most `max_tokens` per module (evenly thinned), float32. Modules sharing one input (q/k/v of a
    layer) share the tensor."""
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
    holder: dict[str, torch.Tensor] = {}
    hooks = []
    for name in modules:
        mod = model.get_submodule(name)

        def hook(_m: Any, args: tuple, _out: Any, name: str = name) -> None:
            x = args[0].detach()  # (b, t, n_in)
            chunks[name].append(x[holder["mask"]].to(torch.float32))  # (real tokens, n_in)

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                                add_special_tokens=False)
                holder["mask"] = enc["attention_mask"].bool()  # (b, t)
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, parts in chunks.items():
        X = torch.cat(parts) if parts else torch.zeros(0)  # (T, n_in)
        if X.shape[0] > max_tokens:
            X = X[torch.linspace(0, X.shape[0] - 1, max_tokens).long()]
        out[name] = X
    return out


# ------------------------------------------------------------------ calibration

def features(signal: Any) -> np.ndarray:
    """The inputs of the calibrated map: [1, clipped scale, log residual] for a weight or module-input `Signal`; a
    signal of another kind brings its own (`analysis.reach.ReachSignal.features`)."""
    if not isinstance(signal, Signal):
        return np.array(signal.features())
    c = min(max(signal.scale, 0.0), 2.0)
    return np.array([1.0, c, math.log(signal.residual + 1e-3)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iters: int = 200) -> np.ndarray:
    """Weights w minimising the cross-entropy of sigmoid(X w) against targets y in [0, 1] (Newton steps)."""
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = _sigmoid(X @ w)
        g = X.T @ (p - y) + l2 * w
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass(frozen=True)
class Calibration:
    """A fitted map from a task's Signal to its expected retention, and its measured track record."""

    basis: str  # data-free | data-free (reach) | data-light (inputs) | data-light (outputs)
    weights: tuple[float, ...]  # the logistic map of `features`; empty for the outputs basis (no fit: the agreement)
    halfwidth: float  # 90% split-conformal: |measured - predicted| on held-back trials, 90th percentile
    spearman_heldout: float
    mae_heldout: float
    n_train: int
    n_heldout: int
    measured_on: str

    def predict(self, signal: Signal) -> tuple[float, float, float]:
        """(estimate, low, high) of the retention, the interval clipped to [0, 1]."""
        return self.around(float(_sigmoid(features(signal) @ np.asarray(self.weights))))

    def around(self, v: float) -> tuple[float, float, float]:
        """(v, low, high): the held-back 90% half-width around an estimate, clipped to [0, 1]."""
        return v, max(0.0, v - self.halfwidth), min(1.0, v + self.halfwidth)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(signals: Sequence[Signal], measured: Sequence[float], heldout: Sequence[bool], *, basis: str,
              measured_on: str) -> Calibration:
    """Fit on the trials not held back, report rank correlation, mean absolute error and the conformal
    half-width on the held-back ones."""
    X = np.stack([features(s) for s in signals])
    y = np.clip(np.asarray(measured, dtype=float), 0.0, 1.0)
    hold = np.asarray(heldout, dtype=bool)
    w = fit_logistic(X[~hold], y[~hold])
    pred = _sigmoid(X[hold] @ w)
    err = np.abs(pred - y[hold])
    return Calibration(basis, tuple(float(v) for v in w), float(np.quantile(err, 0.9)) if err.size else 1.0,
                       spearman(pred, y[hold]), float(err.mean()) if err.size else float("nan"),
                       int((~hold).sum()), int(hold.sum()), measured_on)


@lru_cache(maxsize=1)
def load_calibrations() -> dict[str, Calibration]:
    """The shipped calibrations, by basis; {} when none has been fitted."""
    if not CALIBRATION.is_file():
        return {}
    raw = json.loads(CALIBRATION.read_text(encoding="utf-8"))
    names = {f.name for f in fields(Calibration)}
    return {k: Calibration(**{f: (tuple(v[f]) if f == "weights" else v[f]) for f in names})
            for k, v in raw["calibrations"].items()}


def track_record(basis: str = "data-free") -> dict[str, Any] | None:
    """How the shipped estimate did on the merges held back from its fit: rank correlation, mean absolute error,
    the (predicted, measured) pairs for a scatter, and what they were measured on. None without a calibration."""
    if not CALIBRATION.is_file():
        return None
    raw = json.loads(CALIBRATION.read_text(encoding="utf-8")).get("calibrations", {}).get(basis)
    if raw is None:
        return None
    keys = ("basis", "spearman_heldout", "mae_heldout", "halfwidth", "n_train", "n_heldout", "measured_on",
            "heldout_points")
    return {k: raw.get(k) for k in keys}


@dataclass(frozen=True)
class Prediction:
    """One task's predicted retention with its interval, the signal behind it and its track record."""

    value: float
    low: float
    high: float
    scale: float | None  # data-free / inputs: the signal behind the estimate; None for the outputs basis
    residual: float | None
    basis: str
    spearman_heldout: float
    mae_heldout: float
    measured_on: str  # what the track record was measured on
    computed_on: dict[str, Any] | None = None  # data-light: {task, file, sha256, n, model} the estimate used

    def record(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def estimate(signal: Signal, basis: str) -> Prediction | None:
    """The calibrated estimate for one task's signal; None when no calibration of that basis is shipped."""
    cal = load_calibrations().get(basis)
    if cal is None:
        return None
    v, lo, hi = cal.predict(signal)
    return Prediction(v, lo, hi, signal.scale, signal.residual, basis, cal.spearman_heldout, cal.mae_heldout,
                      cal.measured_on)


REACH = "data-free (reach)"  # the calibration key of the data-free estimate on a loaded model (`analysis.reach`)


def estimate_reach(signal: Any, computed_on: Mapping[str, Any]) -> Prediction | None:
    """The data-free estimate from a `analysis.reach.ReachSignal`, with its interval and track record; None without a
    shipped calibration (or for a weight-0 input's None signal)."""
    cal = load_calibrations().get(REACH)
    if cal is None or signal is None:
        return None
    v, lo, hi = cal.predict(signal)
    return Prediction(v, lo, hi, signal.scale, None, cal.basis, cal.spearman_heldout, cal.mae_heldout,
                      cal.measured_on, {**computed_on, "reach_own": round(signal.own, 5),
                                        "reach_other": round(signal.other, 5)})


def predict_retention(inputs: Sequence[Adapter], merged: Mapping[str, Delta], *,
                      activations: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
                      weights: Sequence[float] | None = None) -> list[Prediction | None]:
    """Predicted retention per input (by index). None for a weight-0 input (it is not meant to survive) or when no
    calibration is shipped for the basis."""
    basis = "data-light" if activations is not None else "data-free"
    signals = task_signals(inputs, merged, activations=activations)
    return [None if weights is not None and weights[i] == 0 else estimate(s, basis) for i, s in enumerate(signals)]


# ------------------------------------------------------------------ data-light on outputs: the faces' step

OUTPUTS = "outputs"  # the calibration key of the data-light estimate the faces offer (`analysis.forecast`)


def estimate_outputs(value: float | None, computed_on: Mapping[str, Any]) -> Prediction | None:
    """The data-light estimate (`analysis.forecast.outputs_value`) with its interval and track record from the shipped calibration;
    None without a calibration or without a value."""
    cal = load_calibrations().get(OUTPUTS)
    if cal is None or value is None:
        return None
    v, lo, hi = cal.around(value)
    return Prediction(v, lo, hi, None, None, cal.basis, cal.spearman_heldout, cal.mae_heldout, cal.measured_on,
                      dict(computed_on))
