"""`adapter-atlas inspect PATH [--json]`: what an adapter holds, module by module.

Default output is an aligned table (format, base model, sha256, then one row per module: rank,
shape, scale, norm, kind; extras and warnings after). `--json` prints `describe_adapter` as strict
JSON (non-finite numbers become null, never bare NaN/Infinity).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from analysis.adapters import load_adapter
from analysis.adapters.describe import describe_adapter, json_safe
from analysis.adapters.safe_text import plain_text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect", help="list the modules, ranks, scales and norms of one adapter",
        description="Load one adapter (PEFT directory, diffusers/kohya/LyCORIS file) and list its modules.")
    p.add_argument("path", metavar="PATH", help="adapter directory or weights file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run)


def format_table(info: dict[str, Any]) -> str:
    """Readable, column-aligned text of a `describe_adapter` result."""
    lines = [
        f"name:       {plain_text(info['name'])}",
        f"format:     {info['format']}",
        f"base model: {plain_text(info['base_model'] or '-')}",
        f"sha256:     {info['sha256']}",
        f"modules:    {len(info['modules'])}",
        "",
    ]
    header = ("module", "rank", "shape", "scale", "norm", "kind")
    rows = [(plain_text(m["name"], None), str(m["rank"]), "x".join(map(str, m["shape"])), f"{m['scale']:.4g}",
             f"{m['norm']:.4g}", m["kind"]) for m in info["modules"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}
    for r in [header, *rows]:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if info["extras"]:
        lines += ["", f"extras ({len(info['extras'])}, kept but not merged as LoRA):"]
        for e in info["extras"]:
            shape = "x".join(map(str, e["shape"]))
            lines.append(f"  {plain_text(e['key'], None)}  [{e['kind']}]  {shape} {e['dtype']}")
    if info["warnings"]:
        lines += ["", "warnings:"] + [f"  - {plain_text(w, None)}" for w in info["warnings"]]
    return "\n".join(lines)


def to_json(info: dict[str, Any]) -> str:
    """Strict JSON text of a description: `allow_nan=False` after mapping NaN/Inf to null."""
    return json.dumps(json_safe(info), indent=2, allow_nan=False)


def model_order(modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Module rows as the model runs them (layers.2 before layers.10), the order the app uses."""
    from analysis.overlap import layer_sort_key, parse_module_name

    def key(m: dict[str, Any]) -> tuple:
        layer, kind = parse_module_name(m["name"])
        return layer_sort_key(layer), kind, m["name"]

    return sorted(modules, key=key)


def run(args: argparse.Namespace) -> int:
    info = describe_adapter(load_adapter(args.path))
    info["modules"] = model_order(info["modules"])
    if args.json:
        sys.stdout.write(to_json(info) + "\n")
    else:
        print(format_table(info))
    return 0
