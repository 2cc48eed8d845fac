"""kohya-ss files: `lora_unet_*` / `lora_te*_*` module names with `.lora_down.weight`,
`.lora_up.weight`, `.alpha`, and LyCORIS modules (`.hada_*` LoHa, `.lokr_*` LoKr) under the same names.

A module's scale is its `.alpha` over its rank (alpha absent -> alpha = rank, scale 1). Module names
are turned back into dotted diffusers paths by `names.kohya_to_canonical`. Any file containing a
LoHa/LoKr module is reported as format "lycoris".
"""
from __future__ import annotations

import torch

from analysis.adapters.diffusers_format import _alpha
from analysis.adapters.limits import check_dense_budget
from analysis.adapters.lowrank import add_half, complete_pairs, make_lowrank, pair_rank
from analysis.adapters.lycoris import LOHA_KEYS, LOKR_KEYS, LazyDenseDelta, LycorisModule, loha_delta, lokr_delta
from analysis.adapters.names import kohya_to_canonical, split_kohya_prefix
from analysis.adapters.parsed import Parsed
from analysis.adapters.safetensors_io import TensorSource
from analysis.adapters.scaling import lora_scale
from analysis.errors import AdapterFormatError

LORA_SUFFIXES = ("lora_down.weight", "lora_up.weight")
KNOWN_SUFFIXES = frozenset(LORA_SUFFIXES + LOHA_KEYS + LOKR_KEYS + ("alpha", "dora_scale", "diff", "diff_b"))


def has_kohya_prefix(key: str) -> bool:
    return split_kohya_prefix(key) is not None


def _bad_key(src: TensorSource, key: str) -> AdapterFormatError:
    """Say precisely why a kohya-looking key cannot be split into module + suffix."""
    module, _, suffix = key.partition(".")
    hints = [f"the LoRA suffix is joined with '_' ('...{j}.{suffix}') instead of '.{j[1:]}.weight'"
             for j in ("_lora_down", "_lora_up") if module.endswith(j)]
    pre = split_kohya_prefix(key)
    if pre and pre[1].startswith(("unet_", "text_encoder_")):
        hints.append(f"the component is named twice ('{pre[0]}{pre[1].split('_')[0]}_')")
    why = "; ".join(hints) if hints else f"unknown suffix '{suffix}'"
    origin = ", as if diffusers keys had every '.' replaced by '_'" if hints else ""
    return AdapterFormatError(f"{src.path}: tensor '{key}': not a valid kohya key ({why}{origin}); expected "
                              "'lora_unet_<module>.lora_down.weight' / '.lora_up.weight' / '.alpha'")


def load_kohya(src: TensorSource) -> Parsed:
    """kohya LoRA/LoCon and LyCORIS LoHa/LoKr modules of one file."""
    groups: dict[str, dict[str, str]] = {}
    parsed = Parsed(format="kohya")
    for key in src.keys():
        if not has_kohya_prefix(key):
            parsed.add_extra(src, key, "embedding" if "emb" in key else "other")
            continue
        module, dot, suffix = key.partition(".")
        if not dot or suffix not in KNOWN_SUFFIXES:
            if suffix == "lora_mid.weight":
                raise AdapterFormatError(f"{src.path}: tensor '{key}': LoCon Tucker (lora_mid) modules are "
                                         "not supported")
            raise _bad_key(src, key)
        groups.setdefault(module, {})[suffix] = key
    lora_halves: dict[str, dict[str, str]] = {}
    alphas: dict[str, float | None] = {}
    for module, parts in groups.items():
        name = kohya_to_canonical(module)
        alpha = _alpha(src, parts.get("alpha"))
        if "dora_scale" in parts:
            parsed.add_extra(src, parts["dora_scale"], "dora_magnitude")
        if "diff_b" in parts:
            parsed.add_extra(src, parts["diff_b"], "bias")
        lyco = {s: k for s, k in parts.items() if s in LOHA_KEYS or s in LOKR_KEYS}
        if lyco:
            parsed.format = "lycoris"
            m = LycorisModule(name=module, keys=lyco, alpha=alpha)
            delta = loha_delta(src, m, name) if any(s in LOHA_KEYS for s in lyco) else lokr_delta(src, m, name)
            _put(parsed, src, name, next(iter(lyco.values())), delta)
        elif "diff" in parts:
            _put(parsed, src, name, parts["diff"], _full_diff(src, parts["diff"]))
        elif any(s in LORA_SUFFIXES for s in parts):
            for s, k in parts.items():  # lora_te_x and lora_te1_x share one canonical name: refuse, never overwrite
                if s in LORA_SUFFIXES:
                    add_half(src.path, lora_halves, name, s, k)
            alphas[name] = alpha
        else:
            only = next(iter(parts.values()))
            raise AdapterFormatError(f"{src.path}: tensor '{only}' has no lora_down/lora_up, hada_* or lokr_* "
                                     f"tensors beside it for module '{module}'")
    for name, (down, up) in complete_pairs(src.path, lora_halves, LORA_SUFFIXES).items():
        scale = lora_scale(pair_rank(src, down, up), alphas[name])
        _put(parsed, src, name, down, make_lowrank(src, down, up, scale))
    if any(e.kind == "dora_magnitude" for e in parsed.extras.values()):
        parsed.warnings.append(f"{src.path}: DoRA modules: the deltas shown are the plain LoRA/LyCORIS part "
                               "(the exact DoRA update needs the base model's weights)")
    parsed.config = {"metadata": dict(src.metadata)}
    parsed.base_model = src.metadata.get("ss_sd_model_name") or src.metadata.get("ss_base_model_version")
    return parsed


def _full_diff(src: TensorSource, key: str) -> LazyDenseDelta:
    """LyCORIS 'full' modules store dW itself (conv kernels flattened here)."""
    shape = src.shape(key)
    if len(shape) < 2:
        raise AdapterFormatError(f"{src.path}: tensor '{key}': a weight diff needs 2+ dimensions, found {list(shape)}")
    width = 1
    for d in shape[1:]:
        width *= d
    kernel = tuple(shape[2:]) or None
    check_dense_budget((shape[0], width), torch.float32, f"{src.path}: tensor '{key}'")
    return LazyDenseDelta(build=lambda: src.get(key).reshape(shape[0], -1).float(), shape=(shape[0], width),
                          kernel_shape=kernel, kind="conv" if kernel else "linear")


def _put(parsed: Parsed, src: TensorSource, name: str, key: str, delta: object) -> None:
    parsed.put_module(src.path, name, key, delta)  # type: ignore[arg-type]
