"""The mechanics the consolidation bench relies on, on the tiny Llama (seconds): frozen positions stay
bit-identical (true cores, random rows, the full fine-tuning gradient mask, staged freezing), the arms that
claim equal trainable parameters have them, every arm of one seed sees the same batches, the NLL is the
training loss by a second route, and the bootstrap interval matches a case computed exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from consolidate_tiny import CharTokenizer, make_adapters, write_tasks
from helpers.tiny import tiny_llama

from analysis.adapters import load_adapter
from analysis.consolidate import ARMS, STRATEGIES, ConsolidateConfig, consolidate
from analysis.consolidate.data import batch_stream, collate, encode_example, load_rows
from analysis.consolidate.stats import paired_contrast
from analysis.consolidate.train import answer_loss
from analysis.errors import AtlasError
from analysis.evaluation import Evaluator, LoadedModel, ModelIdentity, load_data

TASKS = ["alpha", "beta", "gamma"]
LORA_ARMS = [a for a in STRATEGIES if not ARMS[a].full]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("arms")
    data = write_tasks(root / "data", TASKS)
    adapters = [load_adapter(p) for p in make_adapters(root / "adapters", TASKS)]
    return str(data), adapters


def cfg(strategy: str, **kw) -> ConsolidateConfig:
    base = dict(steps=6, rank=4, batch_size=4, p=0.1, lr=5e-2, full_lr=1e-2, export_rank=4)
    return ConsolidateConfig(strategy=strategy, **{**base, **kw})


@pytest.fixture(scope="module")
def runs(setup):
    data, adapters = setup
    return {s: consolidate(tiny_llama(), CharTokenizer(), adapters, data, cfg(s)) for s in STRATEGIES}


def test_random_rows_frozen_bit_identical_and_not_the_cores(runs):
    true, rand = runs["isolation"], runs["isolation-random"]
    assert rand.record["frozen_core_max_change"] == 0.0
    for m, rows in rand.frozen_rows.items():
        assert int(rows.sum()) == int(true.frozen_rows[m].sum())  # as many rows as the true cores
        new, old = rand.modules[m].dense(torch.float64), rand.start[m].dense(torch.float64)
        assert torch.equal(new[rows], old[rows])
    assert any(not torch.equal(rand.frozen_rows[m], true.frozen_rows[m]) for m in true.frozen_rows)


def test_full_finetuning_gradient_mask_keeps_core_entries_bit_identical(runs):
    res = runs["full-isolation"]
    assert res.record["frozen_core_max_change"] == 0.0 and res.record["frozen_positions"] > 0
    moved = 0.0
    for m, mask in res.frozen_rows.items():
        new, old = res.modules[m].dense(torch.float32), res.start[m].dense(torch.float32)  # (n_out, n_in)
        assert torch.equal(new[mask], old[mask]), m
        moved = max(moved, float((new[~mask] - old[~mask]).abs().max()))
    assert moved > 1e-4  # the free entries did train
    # without the mask the same start moves the core entries too
    free = runs["full-merge-then-tune"]
    assert any(not torch.equal(free.modules[m].dense()[mask], res.start[m].dense()[mask])
               for m, mask in res.frozen_rows.items())


def test_staged_isolation_freezes_what_each_stage_moved(runs):
    seq, plain = runs["sequential-isolation"], runs["sequential"]
    assert seq.record["frozen_positions"] > 0 and seq.record["frozen_core_max_change"] == 0.0
    assert plain.record["frozen_positions"] == 0
    assert seq.record["free_parameters_last_stage"] < seq.record["free_parameters"]
    assert seq.record["export_rank"] == 3 * plain.record["export_rank"]  # one frozen copy per stage boundary


def test_lora_arms_train_the_same_number_of_parameters(runs, setup):
    _, adapters = setup
    counts = {s: runs[s].record["trainable_parameters"] for s in LORA_ARMS}
    assert len(set(counts.values())) == 1, counts
    # = every module's (R0 + R) (n_in + n_out): R0 the inputs' ranks, R the fresh block's
    expect = sum((sum(a.modules[m].rank for a in adapters) + 4) * sum(d.shape)
                 for m, d in adapters[0].modules.items())
    assert counts["multitask"] == expect
    # freezing the true cores or random rows leaves the same number free
    assert runs["isolation"].record["free_parameters"] == runs["isolation-random"].record["free_parameters"] \
        < runs["merge-then-tune"].record["free_parameters"]
    full = {runs[s].record["trainable_parameters"] for s in STRATEGIES if ARMS[s].full}
    assert full == {sum(d.shape[0] * d.shape[1] for d in adapters[0].modules.values())}
    unmatched = consolidate(tiny_llama(), CharTokenizer(), adapters, setup[0],
                            cfg("multitask", steps=1, match_params=False)).record["trainable_parameters"]
    assert unmatched == sum(4 * sum(d.shape) for d in adapters[0].modules.values())


def test_paired_batches_across_arms(runs, setup):
    digests = {s: runs[s].record["batch_digest"] for s in STRATEGIES}
    mixed = {digests[s] for s in STRATEGIES if not ARMS[s].staged}
    staged = {digests[s] for s in STRATEGIES if ARMS[s].staged}
    assert len(mixed) == 1 and len(staged) == 1 and mixed != staged
    data, adapters = setup
    other = consolidate(tiny_llama(), CharTokenizer(), adapters, data, cfg("multitask", seed=1))
    assert other.record["batch_digest"] not in mixed  # another seed, other batches
    # the digest is of the (task, row) keys the stream hands out: check against the stream itself
    tok = CharTokenizer()
    enc = {t: [encode_example(tok, r["prompt"], r["answer"]) for r in load_rows(data, t, "train")] for t in TASKS}
    keys_a = [k for _, _, k in batch_stream(enc, [TASKS], [6], 4, 0)]
    keys_b = [k for _, _, k in batch_stream(enc, [TASKS], [6], 4, 0)]
    assert keys_a == keys_b and keys_a != [k for _, _, k in batch_stream(enc, [TASKS], [6], 4, 1)]


def nll_evaluator(model, data: str, limit: int | None = None) -> Evaluator:
    loaded = LoadedModel(model, CharTokenizer(), ModelIdentity("folder", "tiny-llama", "LlamaForCausalLM", None))
    return Evaluator(loaded, load_data([data], metric="nll").select(TASKS), limit=limit, batch_size=5)


def test_evaluation_nll_is_the_training_loss_by_a_second_route(setup):
    data, adapters = setup
    model, tok = tiny_llama(), CharTokenizer()
    ev = nll_evaluator(model, data)  # several batches of unequal widths, sorted by length
    got = ev.nll({}, ["beta"])["beta"]
    rows = load_rows(data, "beta", "eval")
    with torch.no_grad():  # one batch of every row: the mean over answer tokens is the training loss
        ref = float(answer_loss(model, collate([encode_example(tok, r["prompt"], r["answer"]) for r in rows], 0)))
    assert got == pytest.approx(ref, rel=1e-5)


def test_checkpoints_record_a_learning_curve_of_the_live_model(setup):
    data, adapters = setup
    model = tiny_llama()
    ev = nll_evaluator(model, data, limit=8)
    res = consolidate(model, CharTokenizer(), adapters, data, cfg("multitask"), checkpoints=(2, 5),
                      on_checkpoint=lambda step, m: ev.nll({}, TASKS))
    assert sorted(res.record["curve"]) == ["2", "5"] and res.record["curve"]["2"] != res.record["curve"]["5"]
    # one more checkpoint at the last step = the exported update added to the base weights (a second route)
    res6 = consolidate(model, CharTokenizer(), adapters, data, cfg("multitask"), checkpoints=(6,),
                       on_checkpoint=lambda step, m: ev.nll({}, TASKS))
    final = ev.nll(res6.modules, TASKS)
    for t in TASKS:
        assert res6.record["curve"]["6"][t] == pytest.approx(final[t], rel=1e-4)
    assert model.training is False  # left as found (tiny_llama() is in eval mode)


def test_bootstrap_interval_matches_the_binomial_case():
    from scipy.stats import binom

    n = 20  # one seed: the bootstrap mean of 8 ones and 12 zeros is Binomial(20, 0.4) / 20, exactly
    a = np.array([1.0] * 8 + [0.0] * 12)[:, None]
    c = paired_contrast(a, np.zeros_like(a), draws=40_000, seed=1)
    assert c.mean == pytest.approx(0.4) and (c.tasks, c.seeds) == (20, 1)
    assert c.low == pytest.approx(binom.ppf(0.025, n, 0.4) / n, abs=1 / n + 1e-9)
    assert c.high == pytest.approx(binom.ppf(0.975, n, 0.4) / n, abs=1 / n + 1e-9)
    const = paired_contrast(np.full((5, 3), 2.5), np.full((5, 3), 1.0))
    assert (const.low, const.mean, const.high) == (1.5, 1.5, 1.5)
    # a paired design removes a shared task effect: A = B + 0.1 exactly gives a zero-width interval
    base = np.random.default_rng(0).normal(size=(6, 3)) * 10
    tight = paired_contrast(base + 0.1, base)
    assert tight.high - tight.low < 1e-9 and tight.mean == pytest.approx(0.1)


@pytest.mark.parametrize("field, value", [("lr", float("nan")), ("full_lr", float("inf")), ("p", 0.0),
                                          ("p", 1.5), ("stages", 0), ("export_rank", 0), ("tau", -0.1)])
def test_bad_numbers_are_one_error(setup, field, value):
    with pytest.raises(AtlasError, match=field.replace("_", " ")):
        cfg("multitask", **{field: value}).check()
