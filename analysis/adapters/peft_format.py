"""PEFT-style keys (`<module>.lora_A[.<adapter>].weight`), from a PEFT directory or a diffusers file.

PEFT saves `base_model.model.<module path>.lora_A.weight` (older versions keep the adapter name:
`.lora_A.default.weight`), embeddings as `.lora_embedding_A` / `.lora_embedding_B` (no `.weight`),
DoRA magnitudes as `.lora_magnitude_vector`, and full copies of `modules_to_save` under the module's
own key. diffusers writes the same factor names with a pipeline-component prefix (`unet.`,
`text_encoder.`, `transformer.`) and its LoraConfig as JSON in the `lora_adapter_metadata` header entry.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from analysis.adapters.lowrank import add_half, complete_pairs, make_lowrank, pair_rank
from analysis.adapters.names import DENOISER_PREFIXES, TEXT_ENCODER_PREFIXES, diffusers_canonical
from analysis.adapters.parsed import Parsed
from analysis.adapters.safe_text import clip, unique_keys
from analysis.adapters.safe_text import short_repr as _short
from analysis.adapters.safetensors_io import TensorSource
from analysis.adapters.scaling import LoraSettings, lora_scale, settings_from_config
from analysis.errors import AdapterFormatError

PEFT_PREFIX = "base_model.model."
LINEAR_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
EMBEDDING_FACTOR = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?$")
DORA_MAGNITUDE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)*$")
LORA_BIAS = re.compile(r"^(?P<module>.+)\.lora_B(?:\.[^.]+)?\.bias$")
METADATA_ALPHA_KEYS = ("lora_alpha", "alpha", "ss_network_alpha")
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

#: settings_for(module key) -> (settings or None, the key PEFT's patterns are matched against)
SettingsFor = Callable[[str], tuple[LoraSettings | None, str]]


def is_peft_factor(key: str) -> bool:
    return bool(LINEAR_FACTOR.match(key) or EMBEDDING_FACTOR.match(key))


def parse_config_json(path: Path, data: bytes | bytearray, what: str = "adapter config") -> dict[str, Any]:
    """A JSON config (already read, bounded) as a dict, or one line naming the file and what is wrong."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterFormatError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    return parse_config_text(path, text, what)


def parse_config_text(path: Path, text: str, what: str) -> dict[str, Any]:
    """JSON object from text: broken JSON, deep nesting, NaN/Infinity literals and repeated keys refused."""
    def no_constant(name: str) -> float:
        raise ValueError(f"{name} is not valid JSON")

    try:
        config = json.loads(text, parse_constant=no_constant, object_pairs_hook=unique_keys)
    except ValueError as exc:  # JSONDecodeError included
        raise AdapterFormatError(f"{path}: broken JSON in {what}: {clip(str(exc), 160)}") from None
    except RecursionError:
        raise AdapterFormatError(f"{path}: broken JSON in {what}: nested too deeply") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path}: {what} must be a JSON object, found a {type(config).__name__}")
    return config






def _base_model(config: Mapping[str, Any], where: Path) -> str | None:
    value = config.get("base_model_name_or_path")
    if value is None:
        return None
    if not isinstance(value, str):
        raise AdapterFormatError(f"{where}: 'base_model_name_or_path' must be a string, found {_short(value)}")
    return value


def parse_peft_keys(src: TensorSource, fmt: str, settings_for: SettingsFor,
                    canonical: Callable[[str], str], *, strip: str = "",
                    modules_to_save: tuple[str, ...] = (), default_alpha: float | None = None) -> Parsed:
    """Pair lora_A/lora_B (and embedding) factors per module; everything else becomes an extra.

    `strip` is removed from the front of every key first (PEFT's `base_model.model.`). Modules without
    settings get scale `default_alpha / rank` (alpha = rank when None).
    """
    parsed = Parsed(format=fmt)
    halves: dict[str, dict[str, str]] = {}
    embedding: set[str] = set()
    adapters: set[str] = set()
    dora = 0
    for key in src.keys():
        k = _strip(key, strip)
        m = LINEAR_FACTOR.match(k) or EMBEDDING_FACTOR.match(k)
        if m:
            if m["adapter"]:
                adapters.add(m["adapter"])
            add_half(src.path, halves, m["module"], m["ab"], key)
            if m.re is EMBEDDING_FACTOR:
                embedding.add(m["module"])
        elif DORA_MAGNITUDE.match(k):
            parsed.add_extra(src, key, "dora_magnitude")
            dora += 1
        elif LORA_BIAS.match(k):
            parsed.add_extra(src, key, "lora_bias")
        else:
            parsed.add_extra(src, key, _extra_kind(k, modules_to_save))
    if len(adapters) > 1:
        raise AdapterFormatError(f"{src.path}: holds several adapters ({', '.join(sorted(adapters))}): "
                                 "save each one separately")
    for module, (a_key, b_key) in complete_pairs(src.path, halves, ("A", "B")).items():
        is_emb = module in embedding
        rank = pair_rank(src, a_key, b_key, embedding=is_emb)
        settings, pattern_key = settings_for(module)
        if settings is None:
            scale, fan = lora_scale(rank, default_alpha), False
        else:
            expected, alpha = settings.rank_alpha(pattern_key)
            if expected != rank:
                parsed.warnings.append(
                    f"{src.path}: tensor '{a_key}' has rank {rank} but the config gives r={expected} for "
                    f"'{pattern_key}' (PEFT would refuse to load it); scale uses the config's r")
            scale = lora_scale(expected, alpha, use_rslora=settings.use_rslora)
            fan = settings.fan_in_fan_out and not is_emb
        parsed.put_module(src.path, canonical(module), a_key,
                          make_lowrank(src, a_key, b_key, scale, embedding=is_emb, fan_in_fan_out=fan))
    if dora:
        parsed.warnings.append(f"{src.path}: {dora} modules use DoRA: the deltas shown are the plain LoRA part "
                               "(the exact DoRA update needs the base model's weights); magnitudes kept as extras")
    if any(e.kind == "lora_bias" for e in parsed.extras.values()):
        parsed.warnings.append(f"{src.path}: lora_B biases are kept as extras and are not part of the deltas")
    return parsed


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


def _extra_kind(key: str, modules_to_save: tuple[str, ...]) -> str:
    """modules_to_save copies are saved under the module's own key (PEFT matches them by suffix)."""
    module = key.rsplit(".", 1)[0]
    if any(module.endswith(t) for t in modules_to_save):
        return "modules_to_save"
    if ".base_layer." in key or module.endswith("embed_tokens") or "embedding" in module:
        return "embedding"
    if key.endswith(".bias"):
        return "bias"
    return "other"


def load_peft(src: TensorSource, config: Mapping[str, Any] | None, config_path: Path | None) -> Parsed:
    """A PEFT adapter: with its adapter_config.json, with its LoraConfig in the file's
    `lora_adapter_metadata` header (diffusers `save_lora_adapter` without a component prefix), or a
    bare file whose scale has to be assumed."""
    where: Path = config_path or src.path
    if config is None and DIFFUSERS_METADATA_KEY in src.metadata:
        config = _metadata_config(src)
        if "r" not in config:
            config = None  # per-component metadata ('unet.r'): no component prefix here to pick one
        where = src.path
    if config is not None:
        settings = settings_from_config(config, where)
        parsed = parse_peft_keys(src, "peft", lambda m: (settings, m), canonical=lambda m: m, strip=PEFT_PREFIX,
                                 modules_to_save=settings.modules_to_save)
        parsed.config = dict(config)
        parsed.base_model = _base_model(config, where)
        return parsed
    alpha, where_alpha = _metadata_alpha(src.metadata)
    parsed = parse_peft_keys(src, "peft", lambda m: (None, m), canonical=lambda m: m, strip=PEFT_PREFIX,
                             default_alpha=alpha)
    if alpha is None:
        parsed.warnings.append(f"{src.path}: no adapter_config.json: assumed scale 1.0 (lora_alpha = r) "
                               "for every module")
    else:
        parsed.warnings.append(f"{src.path}: no adapter_config.json: assumed lora_alpha = {alpha:g} from "
                               f"metadata '{where_alpha}', scale alpha/r per module")
    parsed.config = {"metadata": dict(src.metadata)}
    return parsed


def _metadata_config(src: TensorSource) -> dict[str, Any]:
    """The JSON object stored in the `lora_adapter_metadata` header entry (checked like a config file)."""
    return parse_config_text(src.path, src.metadata[DIFFUSERS_METADATA_KEY],
                             f"'{DIFFUSERS_METADATA_KEY}' metadata")


def _metadata_alpha(metadata: Mapping[str, str]) -> tuple[float | None, str]:
    for key in METADATA_ALPHA_KEYS:
        if key in metadata:
            try:
                value = float(metadata[key])
            except ValueError:
                continue
            if math.isfinite(value):
                return value, key
    return None, ""


def load_diffusers_peft(src: TensorSource) -> Parsed:
    """diffusers file with PEFT factor names; per-component LoraConfig from `lora_adapter_metadata`.

    The metadata is either one LoraConfig dict (model-level `save_lora_adapter`) or a dict whose keys
    carry the component prefix (`unet.r`, `text_encoder.lora_alpha`) as pipelines save it.
    """
    raw = src.metadata.get(DIFFUSERS_METADATA_KEY)
    per_component: dict[str, LoraSettings] = {}
    shared: LoraSettings | None = None
    config: dict[str, Any] = {}
    if raw is not None:
        config = _metadata_config(src)
        if "r" in config:
            shared = settings_from_config(config, src.path)
        else:
            grouped: dict[str, dict[str, Any]] = {}
            for key, value in config.items():
                component, _, field_name = key.partition(".")
                grouped.setdefault(component, {})[field_name] = value
            per_component = {c: settings_from_config(cfg, src.path) for c, cfg in grouped.items() if "r" in cfg}

    def settings_for(module: str) -> tuple[LoraSettings | None, str]:
        component, _, rest = module.partition(".")
        if component in per_component:
            return per_component[component], rest
        if shared is not None:
            return shared, rest if f"{component}." in DENOISER_PREFIXES + TEXT_ENCODER_PREFIXES else module
        return None, module

    parsed = parse_peft_keys(src, "diffusers", settings_for, canonical=diffusers_canonical)
    if shared is None and not per_component:
        parsed.warnings.append(f"{src.path}: no '{DIFFUSERS_METADATA_KEY}' header entry: assumed alpha = rank "
                               "(scale 1.0) for every module")
    parsed.config = config
    return parsed
