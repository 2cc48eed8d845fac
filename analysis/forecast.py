"""The data-light estimate from outputs: does a merge still write what each task's own adapter writes?

On a few unlabeled prompts per task, the own adapter's greedy completions are generated once (`own_answers`); one
teacher-forced pass then checks, prompt by prompt, that base + the merge would greedily write the same completion and
end the line (`agreement_hits`). `Forecast` is the merge workflow's step over a loaded model and prompt files; the
value becomes a `Prediction` with the shipped calibration's interval and track record (`analysis.predict`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Sequence

import torch

from analysis.adapters.model import Adapter, Delta
from analysis.predict import Prediction, estimate_outputs

N_PROMPTS = 16


def own_answers(model: Any, tokenizer: Any, own: Mapping[str, Delta], prompts: Sequence[str]) -> list[str]:
    """The task's own adapter's greedy completions of unlabeled prompts (the evaluation protocol's generation), cut at
    the first newline and not stripped: the text as written, leading space included."""
    from analysis.evaluation import applied_deltas
    from analysis.evaluation.exact import generate_answers

    with applied_deltas(model, own):
        return generate_answers(model, tokenizer, prompts, raw=True)


@lru_cache(maxsize=4)
def _stop_ids(tokenizer: Any) -> frozenset[int]:
    """Tokens that end a one-line answer: any starting with a newline, and the special tokens (end of turn/text)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return frozenset(special | {i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith("\n")})


def agreement(model: Any, tokenizer: Any, deltas: Mapping[str, Delta], prompts: Sequence[str],
              answers: Sequence[str], *, batch_size: int = 16) -> float:
    """Share of prompts on which base + `deltas` would greedily write `answers[i]` (`agreement_hits`)."""
    hits = agreement_hits(model, tokenizer, deltas, prompts, answers, batch_size=batch_size)
    return sum(hits) / max(1, len(hits))


def agreement_hits(model: Any, tokenizer: Any, deltas: Mapping[str, Delta], prompts: Sequence[str],
                   answers: Sequence[str], *, batch_size: int = 16) -> list[bool]:
    """Per prompt: would base + `deltas` greedily write `answers[i]` (a completion as `own_answers` returns it, leading
    space included) and then end the line? Every answer token is the
    argmax after the prompt and the answer's earlier tokens, and the next argmax is a newline or an end token (or the
    answer is as long as the generation limit, which is where greedy decoding stops anyway). One teacher-forced
    pass, no generation: if the argmax matches at every step, greedy decoding reproduces the answer exactly (the
    exact-match protocol's cut at the first newline gives the same string)."""
    from analysis.evaluation import applied_deltas
    from analysis.evaluation.exact import MAX_NEW_TOKENS

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = _stop_ids(tokenizer)
    hits: list[bool] = []
    with applied_deltas(model, deltas), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            seqs = []
            for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size]):
                p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                a = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
                seqs.append((p, a))
            width = max(len(p) + len(a) for p, a in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (b, t) right padded
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, (p, a) in enumerate(seqs):
                ids[i, :len(p) + len(a)] = torch.tensor(p + a)
                mask[i, :len(p) + len(a)] = 1
            dev = getattr(model, "device", None) or torch.device("cpu")  # the inputs go where the model is
            pred = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.argmax(-1).cpu()  # (b, t)
            for i, (p, a) in enumerate(seqs):
                got = pred[i, len(p) - 1:len(p) + len(a) - 1].tolist()  # position k predicts token k + 1
                end = int(pred[i, len(p) + len(a) - 1])
                hits.append(got == a and (end in stops or len(a) >= MAX_NEW_TOKENS))
    return hits


def outputs_value(own_hits: Sequence[bool], merged_hits: Sequence[bool]) -> float | None:
    """The data-light estimate's value: among the prompts whose own answer the own adapter itself passes the check on
    (all of them unless re-tokenising an answer changes it), the share the merge also reproduces. None when there is
    no such prompt (nothing to compare)."""
    kept = [m for o, m in zip(own_hits, merged_hits) if o]
    return sum(kept) / len(kept) if kept else None


@dataclass
class Forecast:
    """The data-light step of the merge workflow: a loaded model (`analysis.evaluation.load_model`) and unlabeled
    prompts per task (`analysis.evaluation.load_prompts`; answers are never read). For each input with a task of its
    own (the data's mapping, else its folder name), the first `n` prompts: the own adapter's greedy answers (once per
    adapter, remembered) and whether the merge reproduces them (`agreement`, one teacher-forced pass)."""

    loaded: Any  # analysis.evaluation.LoadedModel
    data: Any  # analysis.evaluation.TaskSet of prompts
    n: int = N_PROMPTS
    _answers: dict[tuple[str, str], tuple[list[str], list[bool]]] = field(default_factory=dict, repr=False)

    def check(self, adapters: Sequence[Adapter]) -> list[str]:
        """Refuse adapters that do not fit the model (one line); the base-name warnings."""
        return self.loaded.check_fit(adapters)

    def _prompts(self, adapter: Adapter) -> tuple[Any, list[str]] | None:
        from analysis.errors import EvaluationDataError
        from analysis.evaluation.render import render

        try:
            task = self.data.get(self.data.own_task(adapter))
        except EvaluationDataError:  # no prompts of its own: this input keeps the data-free estimate
            return None
        rows = task.rows[:self.n]
        return task, [render(r, self.loaded.tokenizer, f"{task.path}:{r.line}").prompt for r in rows]

    def _reference(self, adapter: Adapter, prompts: list[str]) -> tuple[list[str], list[bool]]:
        key = (adapter.sha256, "\x00".join(prompts))
        if key not in self._answers:
            answers = own_answers(self.loaded.model, self.loaded.tokenizer, adapter.modules, prompts)
            own = agreement_hits(self.loaded.model, self.loaded.tokenizer, adapter.modules, prompts, answers)
            self._answers[key] = (answers, own)
        return self._answers[key]

    def run(self, adapters: Sequence[Adapter], merged: Mapping[str, Delta], *,
            weights: Sequence[float] | None = None) -> list[Prediction | None]:
        """The data-light estimate per input (by index); None for a weight-0 input, an input without prompts of its
        own, or without a shipped calibration."""
        from analysis.evaluation.evaluator import model_lock

        out: list[Prediction | None] = []
        model, tok = self.loaded.model, self.loaded.tokenizer
        for i, a in enumerate(adapters):
            found = self._prompts(a) if weights is None or weights[i] != 0 else None
            if found is None:
                out.append(None)
                continue
            task, prompts = found
            with model_lock(model):
                answers, own = self._reference(a, prompts)
                got = agreement_hits(model, tok, merged, prompts, answers)
            out.append(estimate_outputs(outputs_value(own, got), {
                "task": task.name, "file": str(task.path), "sha256": task.sha256, "n": len(prompts),
                "model": self.loaded.identity.line(), "agreement": round(sum(got) / len(got), 4),
                "own_agreement": round(sum(own) / len(own), 4)}))
        return out
