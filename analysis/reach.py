"""Reach: how far an update moves the base model on text nobody gave it, the data-free signal of who dominates.

Weight geometry cannot say which task of a merge survives: on the sample set, pairs merged by TSV keep each task at
its full scale with near-orthogonal updates (best-fitting scale 0.97-0.99 for both), and one task keeps 0.93 of its
accuracy while the other keeps 0.09. What decides is how strongly the *other* update acts on the task's inputs. With
no task data that cannot be measured on the task's inputs, but an update that moves the model far on generic text
also moves it on another task's prompts. So the probe is text the base model writes itself:

- `write_probes`: `PROBE_SEQS` sequences of `PROBE_TOKENS` tokens sampled (temperature 1, fixed seed) from the model's
  own start tokens, half from its BOS (else end) token, half from a newline. No data is read, nothing is downloaded.
- `Reach.of(deltas)`: the mean KL(base + deltas || base) over the probes' real positions, in nats per token.

For task t inside a merge M, the signal (`ReachSignal`) is its best-fitting scale c (weights, `analysis.predict`),
the reach of its own adapter R_t and the reach of what the merge adds that is not the task, R_o = reach(M - c T).
`analysis.predict` maps it to expected retention with a calibration fitted on measured merges (basis "data-free
(reach)"), and states how that fit did on merges held back from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta

PROBE_SEQS = 16
PROBE_TOKENS = 48
PROBE_SEED = 1


def write_probes(model: Any, tokenizer: Any, *, n: int = PROBE_SEQS, tokens: int = PROBE_TOKENS,
                 seed: int = PROBE_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (n, t): text the base model samples from its own start tokens. The global torch random state
    is left as it was."""
    start = tokenizer.bos_token or tokenizer.eos_token or ""
    starts = [start] * (n - n // 2) + ["\n"] * (n // 2)
    enc = tokenizer(starts, return_tensors="pt", padding=True, add_special_tokens=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        ids = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                             min_new_tokens=tokens, pad_token_id=pad)  # (n, t)
    prompt = enc["attention_mask"]  # (n, t0): left padded starts; every generated token is real
    mask = torch.cat([prompt, torch.ones(ids.shape[0], ids.shape[1] - prompt.shape[1], dtype=prompt.dtype)], 1)
    return ids, mask


@dataclass(frozen=True)
class ReachSignal:
    """One task inside a merge: c (best-fitting scale, weights), R_t (own reach), R_o (reach of the merge minus c T)."""

    scale: float
    own: float
    other: float

    def record(self) -> dict[str, float]:
        return {"scale": self.scale, "own": self.own, "other": self.other}

    def features(self) -> list[float]:
        """[1, clipped scale, log R_o, log R_t]: the inputs of the calibrated map (`analysis.predict`)."""
        c = min(max(self.scale, 0.0), 2.0)
        return [1.0, c, math.log(self.other + 1e-4), math.log(self.own + 1e-4)]


@dataclass
class Reach:
    """Probes written once per loaded model, the base's log-probabilities on them, and each adapter's own reach
    (remembered by sha256). `loaded`: an `analysis.evaluation.LoadedModel`."""

    loaded: Any
    _probes: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _base: torch.Tensor | None = field(default=None, repr=False)
    _own: dict[str, float] = field(default_factory=dict, repr=False)

    def _logprobs(self, deltas: Mapping[str, Delta]) -> torch.Tensor:
        from analysis.evaluation import applied_deltas
        from analysis.evaluation.evaluator import model_lock

        model = self.loaded.model
        if self._probes is None:
            with model_lock(model):
                self._probes = write_probes(model, self.loaded.tokenizer)
        ids, mask = self._probes
        with model_lock(model), applied_deltas(model, deltas), torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)  # (n, t, V)

    def of(self, deltas: Mapping[str, Delta]) -> float:
        """Mean KL(base + deltas || base) per real probe token (nats)."""
        if self._base is None:
            self._base = self._logprobs({})
        lp = self._logprobs(deltas)
        mask = self._probes[1].bool()
        kl = (lp.exp() * (lp - self._base)).sum(-1)  # (n, t)
        return float(kl[mask].mean().clamp_min(0.0))

    def own(self, adapter: Adapter) -> float:
        if adapter.sha256 not in self._own:
            self._own[adapter.sha256] = self.of(adapter.modules)
        return self._own[adapter.sha256]

    def signals(self, inputs: Sequence[Adapter], merged: Mapping[str, Delta], *,
                weights: Sequence[float] | None = None) -> list[ReachSignal | None]:
        """Per input (by index); None for a weight-0 input (it is not meant to survive)."""
        from analysis.merge.ops import linear_combination
        from analysis.predict import task_signals

        scales = [s.scale for s in task_signals(inputs, merged)]
        out: list[ReachSignal | None] = []
        for i, a in enumerate(inputs):
            if weights is not None and weights[i] == 0:
                out.append(None)
                continue
            c = scales[i]
            rest = {name: (linear_combination([m, a.modules[name]], [1.0, -c]) if name in a.modules else m)
                    for name, m in merged.items()}
            out.append(ReachSignal(c, self.own(a), self.of(rest)))
        return out

    def identity(self) -> dict[str, Any]:
        """What the signal was computed on: the model and the probes (no data)."""
        return {"model": self.loaded.identity.line(), "probes": f"{PROBE_SEQS} x {PROBE_TOKENS} tokens the base model "
                f"wrote (seed {PROBE_SEED}); no task data"}

