"""Core rows and the start merge, each by two routes: factored saliency vs dense, our row-isolation start vs
the registered `isolation` merge method (granularity rows, blend mean), and the input RMS vs a direct hook."""
from __future__ import annotations

import pytest
import torch
from consolidate_tiny import CharTokenizer, make_adapters
from helpers.tiny import tiny_llama

from analysis.adapters import load_adapter
from analysis.consolidate.cores import core_rows, input_rms, isolation_start, row_jaccard, row_scores
from analysis.merge import merge_adapters

TASKS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    torch.set_num_threads(1)
    return [load_adapter(p) for p in make_adapters(tmp_path_factory.mktemp("cores"), TASKS)]


def test_saliency_scores_factored_equal_dense(adapters):
    gen = torch.Generator().manual_seed(0)
    rms = [{m: torch.rand(d.shape[1], generator=gen) for m, d in a.modules.items()} for a in adapters]
    sal = row_scores(adapters, "saliency", rms=rms)
    mag = row_scores(adapters, "magnitude")
    for i, a in enumerate(adapters):
        for m, d in a.modules.items():
            W = d.dense(torch.float64)  # (n_out, n_in)
            dense = ((W * rms[i][m].double()[None, :]) ** 2).sum(dim=1)  # (n_out,)
            torch.testing.assert_close(sal[m][i].double(), dense, rtol=1e-5, atol=1e-9)
            torch.testing.assert_close(mag[m][i].double(), (W**2).sum(dim=1), rtol=1e-5, atol=1e-9)
    # different weights on the inputs pick different rows somewhere
    assert any(not torch.equal(a, b) for m in sal for a, b in zip(core_rows(sal, 0.1)[m].values(),
                                                                 core_rows(mag, 0.1)[m].values()))


def test_start_equals_the_registered_row_isolation_merge(adapters):
    p = 0.1
    scores = row_scores(adapters, "magnitude")
    start, info = isolation_start(adapters, core_rows(scores, p), scores)
    ref = merge_adapters(adapters, "isolation", params={"granularity": "rows", "p": p, "blend": "mean"}).modules
    assert sorted(start) == sorted(ref)
    for m in start:
        torch.testing.assert_close(start[m].dense(torch.float64), ref[m].dense(torch.float64), rtol=1e-5, atol=1e-7)
    assert len(info["groups"]) == len(adapters)


def test_row_jaccard_diagonal_and_symmetry(adapters):
    cores = core_rows(row_scores(adapters, "magnitude"), 0.25)
    J = row_jaccard(cores, len(adapters))
    assert (J.diagonal() == 1).all() and (J == J.T).all() and ((J >= 0) & (J <= 1)).all()


def test_input_rms_matches_a_direct_forward(adapters):
    model, tok = tiny_llama(), CharTokenizer()
    prompts = ["alpha\nInput: abc\nOutput:", "alpha\nInput: de\nOutput:"]
    rms = input_rms(model, tok, adapters[0], prompts)
    name = "model.layers.0.self_attn.q_proj"
    seen = []
    hook = model.get_submodule(name).register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    from analysis.evaluation.fit import applied_deltas

    with applied_deltas(model, adapters[0].modules), torch.no_grad():
        for p in prompts:
            model(input_ids=torch.tensor([tok(p)["input_ids"]]))
    hook.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()  # (tokens, n_in)
    torch.testing.assert_close(rms[name].double(), x.pow(2).mean(dim=0).sqrt(), rtol=1e-4, atol=1e-6)
