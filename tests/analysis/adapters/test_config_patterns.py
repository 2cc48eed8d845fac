"""Adapter configs are hostile input too: rank/alpha patterns match like PEFT's `get_pattern_key` but in
bounded time (no backtracking engine), and every malformed field is one line naming the file and field.
Inputs are built here in tmp_path."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from analysis.adapters import load_adapter
from analysis.adapters.patterns import PatternTable
from analysis.errors import AdapterFormatError, ResourceLimitError

P = "base_model.model."
LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj")


def factors(modules: tuple[str, ...] = LAYERS, *, prefix: str = P, r: int = 4,
            seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        out[f"{prefix}{m}.lora_A.weight"] = torch.randn(r, 16, generator=g)
        out[f"{prefix}{m}.lora_B.weight"] = torch.randn(8, r, generator=g)
    return out


def peft_dir(tmp: Path, config: object, tensors: dict[str, torch.Tensor] | None = None, name: str = "a") -> Path:
    d = tmp / name
    d.mkdir(exist_ok=True)
    save_file(tensors if tensors is not None else factors(), d / "adapter_model.safetensors")
    text = config if isinstance(config, (str, bytes)) else json.dumps(config)
    (d / "adapter_config.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return d


def base(**over: object) -> dict[str, object]:
    return {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]} | over


def refused(path: Path, *needles: str, error: type[Exception] = AdapterFormatError) -> str:
    with pytest.raises(error) as info:
        load_adapter(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 600, msg
    for n in needles:
        assert n in msg, msg
    return msg


def peft_get_pattern_key(patterns: list[str], key: str) -> str:
    """PEFT's own rule (peft/utils/other.py get_pattern_key), run with Python's re on safe inputs."""
    for p in patterns:
        if re.match(rf"(.*\.)?({p})$", key):
            return p
    return key


PARITY_PATTERNS = [
    "q_proj", "self_attn.k_proj", "layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj", "proj",
    "layers\\.0\\..*", "model.layers.[0-9]+.mlp.down_proj", "(q|k)_proj", "layers.0.self_attn.(q|v)_proj",
    "a)|(model.layers.1.mlp.down_proj", "down.proj", ".*", "k_pro", "self_attn", "\\w+_proj",
    "model-layers", "model.layers.1", "layers.1.mlp.down_proj$", "^model.layers.0.self_attn.q_proj",
]
PARITY_KEYS = list(LAYERS) + ["model.layers.0.self_attn.xq_proj", "model.layers.10.mlp.down_proj",
                              "modelXlayers.0.self_attn.q_proj", "q_proj", "proj", "a.b", "model-layers"]


@pytest.mark.parametrize("key", PARITY_KEYS)
def test_lookup_matches_peft_rule_for_literal_and_regex_patterns(key: str) -> None:
    """Every (ordered) prefix of the pattern list picks the same first pattern as PEFT's re-based rule."""
    for start in range(len(PARITY_PATTERNS)):
        order = PARITY_PATTERNS[start:] + PARITY_PATTERNS[:start]
        table = PatternTable({p: i for i, p in enumerate(order)})
        expected = peft_get_pattern_key(order, key)
        got = table.lookup(key, None)
        assert (order[got] if got is not None else key) == expected, (order, key)


KEYS = st.text(alphabet="ab._0", min_size=1, max_size=12)
LITERALS = st.text(alphabet="ab._0-", min_size=1, max_size=6)
REGEXES = st.text(alphabet="ab.|()*+?[]^$\\", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(st.one_of(LITERALS, REGEXES), min_size=1, max_size=6, unique=True), key=KEYS)
def test_lookup_equals_python_re_on_random_patterns(patterns: list[str], key: str) -> None:
    """Two routes: our literal/RE2 table versus PEFT's rule run by Python's re (safe on these tiny inputs)."""
    usable = []
    for p in patterns:
        try:
            re.compile(rf"(.*\.)?({p})$")
        except re.error:
            continue
        usable.append(p)
    assume(usable)
    try:
        table = PatternTable({p: i for i, p in enumerate(usable)})
    except AdapterFormatError:  # RE2 refuses a construct Python accepts: a refusal, never a wrong answer
        return
    got = table.lookup(key, None)
    assert (usable[got] if got is not None else key) == peft_get_pattern_key(usable, key)


def test_catastrophic_pattern_is_evaluated_in_linear_time(tmp_path: Path) -> None:
    """`(a|aa)+b` against 'model.aaaa...c' takes Python's re ~2^40 steps; RE2 answers at once."""
    module = "model." + "a" * 40 + "c.q_proj"
    cfg = base(rank_pattern={"(a|aa)+b.q_proj": 2, "q_proj": 4}, alpha_pattern={"((a+)+)+x": 1.0})
    adapter = load_adapter(peft_dir(tmp_path, cfg, factors((module,))))
    assert adapter.modules[module].scale == 2.0  # r=4 from the second (literal) pattern, alpha 8
    hit = "model." + "a" * 40 + "b.q_proj"
    adapter = load_adapter(peft_dir(tmp_path, cfg, factors((hit,), r=2), name="b"))
    assert adapter.modules[hit].scale == 4.0 and not adapter.warnings  # r=2 from the regex, alpha 8


def test_regex_work_is_bounded_by_a_stated_budget(tmp_path: Path) -> None:
    modules = tuple(f"m{i}." + "x" * 1200 for i in range(60))
    cfg = base(rank_pattern={f"y{i}[0-9]+z": 2 for i in range(400)})
    refused(peft_dir(tmp_path, cfg, factors(modules)), "rank_pattern needs more than", "regex",
            error=ResourceLimitError)


@pytest.mark.parametrize(("over", "needles"), [
    ({"rank_pattern": {"(": 2}}, ["rank_pattern key '('", "not a valid regular expression"]),
    ({"rank_pattern": {"(?=q)q_proj": 2}}, ["rank_pattern key '(?=q)q_proj'", "linear time"]),
    ({"alpha_pattern": {"(q)\\1": 2}}, ["alpha_pattern key", "linear time"]),
    ({"rank_pattern": ["q_proj"]}, ["'rank_pattern' must be a JSON object", "list"]),
    ({"alpha_pattern": "q_proj"}, ["'alpha_pattern' must be a JSON object", "str"]),
    ({"rank_pattern": {"q_proj": None}}, ["rank_pattern['q_proj'] must be a positive integer", "None"]),
    ({"rank_pattern": {"q_proj": 2.5}}, ["rank_pattern['q_proj']", "2.5"]),
    ({"alpha_pattern": {"q_proj": "8"}}, ["alpha_pattern['q_proj'] must be a number", "'8'"]),
    ({"alpha_pattern": {"q_proj": None}}, ["alpha_pattern['q_proj'] must be a number"]),
    ({"rank_pattern": {"x" * 2000: 2}}, ["rank_pattern key", "2000 characters"]),
    ({"r": 1e308}, ["'r' must be a positive integer", "1e+308"]),
    ({"r": 10 ** 400}, ["'r' must be a positive integer up to 2^31"]),
    ({"r": True}, ["'r' must be a positive integer"]),
    ({"r": "4"}, ["'r' must be a positive integer", "'4'"]),
    ({"lora_alpha": 10 ** 400}, ["'lora_alpha' must be a finite number"]),
    ({"lora_alpha": [8]}, ["'lora_alpha' must be a number"]),
    ({"use_rslora": "false"}, ["'use_rslora' must be true or false", "'false'"]),
    ({"modules_to_save": [1, 2]}, ["'modules_to_save' must be a list of module names", "[1, 2]"]),
    ({"peft_type": ["LORA"]}, ["peft_type ['LORA'] is not supported"]),
    ({"base_model_name_or_path": {"evil": 1}}, ["'base_model_name_or_path' must be a string"]),
])
def test_malformed_config_fields_are_one_line(tmp_path: Path, over: dict, needles: list[str]) -> None:
    refused(peft_dir(tmp_path, base(**over)), "adapter_config.json", *needles)


def test_null_patterns_mean_none(tmp_path: Path) -> None:
    adapter = load_adapter(peft_dir(tmp_path, base(rank_pattern=None, alpha_pattern=None, modules_to_save=None)))
    assert {d.scale for d in adapter.modules.values()} == {2.0}


@pytest.mark.parametrize(("text", "needle"), [
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": NaN}', "NaN is not valid JSON"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 1e400}', "'lora_alpha' must be a finite number"),
    ('{"peft_type": "LORA", "r": 4, "r": 8}', "'r' appears twice"),
    ("[" * 100_000 + "]" * 100_000, "broken JSON"),
    ('["peft_type", "LORA"]', "must be a JSON object, found a list"),
    (b'{"peft_type": "LORA", "r": 4, "base_model_name_or_path": "caf\xe9"}', "is not UTF-8 text (byte"),
])
def test_broken_config_text_is_one_line(tmp_path: Path, text: str | bytes, needle: str) -> None:
    refused(peft_dir(tmp_path, text), "adapter_config.json", needle)


def test_single_file_reads_lora_config_from_lora_adapter_metadata(tmp_path: Path) -> None:
    """diffusers `save_lora_adapter` layout: PEFT keys without a component prefix and the LoraConfig in the
    header. Its scales (alpha, r, rank_pattern, alpha_pattern, rsLoRA) equal those of the config route."""
    cfg = base(r=4, lora_alpha=16, use_rslora=True, rank_pattern={"k_proj": 2}, alpha_pattern={"mlp.down_proj": 3})
    t = factors(LAYERS, prefix="")
    t[f"{LAYERS[1]}.lora_A.weight"], t[f"{LAYERS[1]}.lora_B.weight"] = torch.randn(2, 16), torch.randn(8, 2)
    by_config = load_adapter(peft_dir(tmp_path, cfg, t))
    path = tmp_path / "single.safetensors"
    save_file(t, path, metadata={"lora_adapter_metadata": json.dumps(cfg), "format": "pt"})
    single = load_adapter(path)
    assert single.format == "peft" and not single.warnings and single.config["rank_pattern"] == {"k_proj": 2}
    assert sorted(single.modules) == sorted(by_config.modules) == sorted(LAYERS)
    expected = {LAYERS[0]: 16 / 2, LAYERS[1]: 16 / 2 ** 0.5, LAYERS[2]: 3 / 2}  # alpha / sqrt(r) (rsLoRA)
    for name, delta in single.modules.items():
        assert delta.scale == pytest.approx(expected[name])
        assert delta.scale == by_config.modules[name].scale
        torch.testing.assert_close(delta.dense(), by_config.modules[name].dense())
    bad = tmp_path / "bad.safetensors"
    save_file(t, bad, metadata={"lora_adapter_metadata": json.dumps(base(rank_pattern={"(": 1}))})
    refused(bad, "bad.safetensors", "rank_pattern key '('")
