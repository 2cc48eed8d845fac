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
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta

PROBE_SEQS = 16
PROBE_TOKENS = 48
PROBE_SEED = 1


def write_probes(model: Any, tokenizer: Any, *, n: int = PROBE_SEQS, tokens: int = PROBE_TOKENS,
                 seed: int = PROBE_SEED, starts: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (n, t) on the model's device: text the model samples (temperature 1, its generation config
    otherwise) from `starts`, by default its own start token (BOS, else end) for half and a newline for the other
    half. Left padded where starts differ in length; every generated token is real. The random state of the CPU and
    of the model's device is left as it was."""
    start = tokenizer.bos_token or tokenizer.eos_token or "\n"
    starts = list(starts) if starts is not None else [start] * (n - n // 2) + ["\n"] * (n // 2)
    device = getattr(model, "device", None) or torch.device("cpu")
    enc = {k: v.to(device) for k, v in
           tokenizer(starts, return_tensors="pt", padding=True, add_special_tokens=False).items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        ids = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                             min_new_tokens=tokens, pad_token_id=pad)  # (n, t)
    prompt = enc["attention_mask"]  # (n, t0)
    tail = torch.ones(ids.shape[0], ids.shape[1] - prompt.shape[1], dtype=prompt.dtype, device=prompt.device)
    return ids, torch.cat([prompt, tail], 1)


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
    (remembered by its sha256 and module names). `loaded`: an `analysis.evaluation.LoadedModel`. Safe to share
    between threads (the app's visitors): the first use writes the probes under a lock, and every pass through the
    model holds the model's lock."""

    loaded: Any
    chunk: int = 4  # sequences per forward pass: the peak memory is a few (chunk, t, vocabulary) tensors
    _probes: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _base: list[torch.Tensor] | None = field(default=None, repr=False)
    _own: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict, repr=False)
    _init: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _ready(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The probes and the base's log-probabilities on them, made once (lock first, then the model's lock)."""
        with self._init:
            if self._base is None:
                from analysis.evaluation.evaluator import model_lock

                if self._probes is None:  # (given probes are kept: a test or a caller's own)
                    with model_lock(self.loaded.model):
                        self._probes = write_probes(self.loaded.model, self.loaded.tokenizer)
                self._base = self._logprobs({})
        assert self._probes is not None
        return self._probes[0], self._probes[1], self._base

    def _logprobs(self, deltas: Mapping[str, Delta]) -> list[torch.Tensor]:
        """Per chunk of probe sequences: log-probabilities (chunk, t, V) of base + deltas, at the positions the text
        was written at (left padding does not shift them)."""
        from analysis.evaluation import applied_deltas
        from analysis.evaluation.evaluator import model_lock

        model = self.loaded.model
        assert self._probes is not None
        ids, mask = self._probes
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)  # (n, t)
        out = []
        with model_lock(model), applied_deltas(model, deltas), torch.no_grad():
            for k in range(0, ids.shape[0], self.chunk):
                sl = slice(k, k + self.chunk)
                logits = model(input_ids=ids[sl], attention_mask=mask[sl], position_ids=positions[sl]).logits
                out.append(logits.float().log_softmax(-1))
        return out

    def of(self, deltas: Mapping[str, Delta]) -> float:
        """Mean KL(base + deltas || base) per real probe token (nats)."""
        _, mask, base = self._ready()
        total, count = 0.0, 0
        for k, (lp, lb) in enumerate(zip(self._logprobs(deltas), base)):
            m = mask[k * self.chunk:(k + 1) * self.chunk].bool()
            kl = (lp.exp() * (lp - lb)).sum(-1)  # (chunk, t)
            total += float(kl[m].sum())
            count += int(m.sum())
        return max(total / max(count, 1), 0.0)

    def own(self, adapter: Adapter) -> float:
        key = (adapter.sha256, tuple(sorted(adapter.modules)))  # a restricted copy keeps its source's sha256
        if key not in self._own:
            self._own[key] = self.of(adapter.modules)
        return self._own[key]

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

