"""Teacher-forced answer NLL: batched, no generation; the fast signal for comparing merges.

Each row is (token ids, number of leading ids not scored): the answer tokens are scored given everything
before them. Rows are sorted by length and right-padded (positions are then 0..len-1 exactly as for one
unpadded row). Where the model is a plain decoder body plus an output projection, the projection runs on the
scored positions only (the vocabulary matmul is most of the cost of a short answer); models that post-process
logits (soft-capping, logit scale) take the full forward pass. NLL is in nats per token, pooled over the
task's tokens (sum / count), and perplexity is exp(NLL).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

Progress = Callable[[int, int, str], None]
NLL_BATCH_SIZE = 32


def _fast_route(model: Any) -> tuple[Any, Any] | None:
    """(decoder body, output projection) when logits are exactly head(body(x)), else None."""
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or body is model:
        return None
    return body, head


def _collate(rows: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (b, t)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (b, t)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (b, t)
    for i, (x, skip) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, skip:len(x)] = torch.tensor(x[skip:], dtype=torch.long)
        mask[i, :len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


@torch.no_grad()
def row_nll(model: Any, rows: Sequence[tuple[list[int], int]], *, pad_id: int, batch_size: int = NLL_BATCH_SIZE,
            progress: Progress | None = None, label: str = "") -> list[tuple[float, int]]:
    """(summed NLL in nats, scored tokens) per row, in the order given."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    route = _fast_route(model)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, labels, mask = _collate([rows[i] for i in idx], pad_id, device)
        target = labels[:, 1:]  # (b, t-1)
        keep = target != -100  # (b, t-1)
        if route is not None:
            body, head = route
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            logits = head(hidden[:, :-1][keep])  # (n_scored, vocab)
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]  # (n_scored, vocab)
        nll = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="none")  # (n_scored,)
        which = keep.nonzero()[:, 0]  # (n_scored,) row of each scored token
        sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add_(0, which, nll.double())
        counts = keep.sum(dim=1)  # (b,)
        for k, i in enumerate(idx):
            out[i] = (float(sums[k]), int(counts[k]))
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order), label)
    return out


def pooled(per_row: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """{nll, perplexity, tokens, n}: token-weighted mean over the rows."""
    total = sum(s for s, _ in per_row)
    tokens = sum(c for _, c in per_row)
    mean = total / tokens if tokens else float("nan")
    return {"nll": mean, "perplexity": math.exp(mean) if tokens and mean < 700 else float("inf"),
            "tokens": tokens, "n": len(per_row)}
