"""Consolidation on the tiny Llama: frozen cores stay bit-identical, every strategy's export loads in PEFT and
reproduces the trained update (ours vs PEFT's get_delta_weight), and the schedule/budget is shared."""
from __future__ import annotations

import json

import pytest
import torch
from consolidate_tiny import CharTokenizer, make_adapters, write_tasks
from helpers.tiny import peft_deltas, tiny_llama

from analysis.adapters import load_adapter
from analysis.consolidate import STRATEGIES, ConsolidateConfig, consolidate
from analysis.consolidate.blocks import block_snapshot, install, uninstall
from analysis.consolidate.held import lora_specs
from analysis.consolidate.run import run_consolidation
from analysis.errors import AtlasError

TASKS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("consolidate")
    data = write_tasks(root / "data", TASKS)
    adapters = [load_adapter(p) for p in make_adapters(root / "adapters", TASKS)]
    return root, str(data), adapters


def cfg(strategy: str, **kw) -> ConsolidateConfig:
    return ConsolidateConfig(strategy=strategy, steps=kw.pop("steps", 6), rank=4, batch_size=4, p=0.1, export_rank=4,
                             **kw)


@pytest.mark.parametrize("cores", ["magnitude", "saliency"])
def test_isolation_keeps_core_rows_bit_identical(setup, cores):
    _, data, adapters = setup
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = consolidate(model, CharTokenizer(), adapters, data, cfg("isolation", cores=cores, lr=5e-2))
    assert res.record["frozen_rows"] > 0
    moved = 0.0
    for m, rows in res.frozen_rows.items():
        new = res.modules[m].dense(torch.float64)  # (n_out, n_in)
        old = res.start[m].dense(torch.float64)  # (n_out, n_in)
        assert torch.equal(new[rows], old[rows]), m  # bit-identical, computed by the same route
        moved = max(moved, float((new[~rows] - old[~rows]).abs().max()))
    assert moved > 1e-4  # the rest did train
    assert res.record["frozen_core_max_change"] == 0.0
    # base weights untouched, original layers back in place
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear"


def test_isolation_factors_of_core_rows_unchanged_and_masked_blocks_zero(setup):
    _, data, adapters = setup
    c = cfg("isolation", steps=1)
    res = consolidate(tiny_llama(), CharTokenizer(), adapters, data, c)
    specs = lora_specs(adapters, c, res.start, res.frozen_rows)
    model = tiny_llama()
    installed = install(model, specs)
    cores = block_snapshot(installed, "cores")
    uninstall(model, installed)
    for m, rows in res.frozen_rows.items():
        B, _ = cores[m]
        assert torch.equal(B[~rows], torch.zeros_like(B[~rows]))
        trained_B = res.modules[m].B  # (n_out, R): [cores | start | fresh]
        r0 = B.shape[1]
        assert torch.equal(trained_B[rows][:, r0:], torch.zeros_like(trained_B[rows][:, r0:]))
        assert torch.equal(trained_B[rows][:, :r0], B[rows])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_exports_what_peft_loads(setup, strategy, tmp_path):
    from peft import PeftModel

    _, data, adapters = setup
    model = tiny_llama()
    calls = []

    def fake_eval(deltas, tasks):
        calls.append(sorted(deltas))
        return {t: 0.5 for t in tasks}

    out = tmp_path / strategy
    rec = run_consolidation(model, CharTokenizer(), adapters, data, cfg(strategy), out, evaluate=fake_eval,
                            own_accuracy={t: 1.0 for t in TASKS})
    assert len(rec["loss"]) == 6 and rec["retention"] == {t: 0.5 for t in TASKS}
    assert rec["export"]["max_relative_error"] < 1e-6  # the written LoRA is the trained (or truncated) update
    if strategy.startswith("full-"):  # the exact dense update is written too, and the LoRA's fidelity stated
        from safetensors.torch import load_file

        delta = {k.removesuffix(".delta"): v for k, v in load_file(out / "delta.safetensors").items()}
        lora = load_adapter(out).modules
        assert sorted(delta) == sorted(lora)
        err2 = sum(float(((delta[m].double() - lora[m].dense(torch.float64)) ** 2).sum()) for m in delta)
        tot2 = sum(float((delta[m].double() ** 2).sum()) for m in delta)
        assert (err2 / tot2) ** 0.5 == pytest.approx(rec["export"]["lora_fidelity"]["relative_error"], rel=1e-4)
        assert 0 < rec["export"]["lora_fidelity"]["relative_error"] < 1
    saved = json.loads((out / "training.json").read_text())
    assert saved["config"]["strategy"] == strategy and (out / "recipe.json").is_file()
    # PEFT's own reading of the file against our trained update
    ours = load_adapter(out)
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(out))
    theirs = peft_deltas(peft_model)
    assert sorted(theirs) == sorted(ours.modules) and calls == [sorted(ours.modules)]
    for m, d in ours.modules.items():
        torch.testing.assert_close(theirs[m], d.dense(torch.float32), rtol=1e-5, atol=1e-6)


def test_same_budget_and_schedule_for_every_strategy(setup):
    _, data, adapters = setup
    recs = {s: consolidate(tiny_llama(), CharTokenizer(), adapters, data, cfg(s, steps=4)).record for s in STRATEGIES}
    assert {len(r["loss"]) for r in recs.values()} == {4}
    assert sum(st["steps"] for st in recs["sequential"]["stages"]) == 4
    # K = 3 stages of consecutive task groups (here one task each), 2 + 1 + 1 steps
    assert [st["tasks"] for st in recs["sequential"]["stages"]] == [[t] for t in TASKS]
    assert [st["steps"] for st in recs["sequential"]["stages"]] == [2, 1, 1]
    # isolation and merge-then-tune start from the same merge: same first loss
    assert recs["isolation"]["loss"][0] == pytest.approx(recs["merge-then-tune"]["loss"][0], rel=1e-5)
    assert recs["multitask"]["loss"][0] == pytest.approx(recs["sequential"]["loss"][0], rel=1e-5) or \
        recs["sequential"]["stages"][0]["tasks"] != TASKS


def test_bad_strategy_is_one_error(setup):
    _, data, adapters = setup
    with pytest.raises(AtlasError, match="strategy 'nope'"):
        consolidate(tiny_llama(), CharTokenizer(), adapters, data, cfg("nope"))
    with pytest.raises(AtlasError, match="train.jsonl"):
        consolidate(tiny_llama(), CharTokenizer(), adapters, data + "/missing", cfg("multitask"))
