"""`adapter-atlas consolidate`: N task adapters into one by short mixed-task training (CPI-FT and baselines).

    adapter-atlas consolidate sample_adapters/format_date sample_adapters/math_add ... \\
        --data sample_adapters/tasks --strategy isolation --steps 50 --out consolidated/

Task names are the adapter directory names; task data is DIR/<task>/{train,eval}.jsonl. Writes a PEFT
adapter (PeftModel.from_pretrained loads it on the inputs' base), training.json (loss curve, seconds,
per-task accuracy measured on the written adapter) and recipe.json. Progress with ETA on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.commands import options as opt
from analysis.errors import AtlasError


def register(subparsers: argparse._SubParsersAction) -> None:
    from analysis.consolidate.train import STRATEGIES

    p = subparsers.add_parser(
        "consolidate", help="train one adapter for every task (isolation / multitask / sequential / merge-then-tune)",
        description="Consolidate task adapters into one by short fine-tuning on the task mix.")
    p.add_argument("paths", nargs="+", metavar="ADAPTER", help="adapter directories (name = task)")
    p.add_argument("--data", required=True, metavar="DIR", help="task data: DIR/<task>/{train,eval}.jsonl")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--steps", type=opt.count(10**6), required=True, help="optimizer steps (the same budget for every strategy)")
    p.add_argument("--rank", type=opt.count(4096), default=16, help="rank R of the fresh LoRA block (default 16)")
    p.add_argument("--batch-size", type=opt.BATCH, default=8)
    p.add_argument("--lr", type=opt.LEARNING_RATE, default=3e-3)
    p.add_argument("--seed", type=opt.SEED, default=0)
    p.add_argument("--cores", default="magnitude", choices=("magnitude", "saliency"),
                   help="core rows by |dW| (paper) or by |dW| x input activation RMS on the task's prompts")
    p.add_argument("--p", type=opt.fraction(open_low=True), default=0.01, help="core rows per task and module (default 0.01, the paper's)")
    p.add_argument("--base", default=None, metavar="PATH", help="local base model directory (default: the sample base)")
    p.add_argument("--limit", type=opt.EVAL_LIMIT, default=None, help="eval rows per task for the accuracy (default all)")
    p.add_argument("--no-eval", action="store_true", help="skip measuring accuracy on the written adapter")
    p.add_argument("--threads", type=opt.THREADS, default=1,
                   help="torch threads (default 1: on a shared CPU two threads spin-wait and run far slower)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="stored precision of the written adapter (default fp32); its error is in training.json")
    p.add_argument("--json", action="store_true", help="print training.json to stdout")
    p.set_defaults(func=run)


def load_base(path: str | None):  # noqa: ANN201 - (model, tokenizer)
    if path is None:
        from analysis.base_model import load_base_model

        return load_base_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).is_dir():
        raise AtlasError(f"--base {path}: not a local model directory (nothing is downloaded)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval(), tokenizer


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from analysis.adapters import load_adapter
    from analysis.consolidate.evaluator import TaskEvaluator
    from analysis.consolidate.export import prepare_out
    from analysis.consolidate.run import run_consolidation
    from analysis.consolidate.train import ConsolidateConfig

    torch.set_num_threads(max(1, args.threads))
    prepare_out(args.out, args.force)
    if not Path(args.data).is_dir():
        raise AtlasError(f"--data {args.data}: no such directory")
    cfg = ConsolidateConfig(strategy=args.strategy, steps=args.steps, rank=args.rank, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, cores=args.cores, p=args.p)
    cfg.check()
    adapters = [load_adapter(Path(p)) for p in args.paths]
    model, tokenizer = load_base(args.base)
    evaluate = None if args.no_eval else TaskEvaluator(model, tokenizer, args.data, limit=args.limit)
    own = None
    if evaluate is not None:
        own = {a.name: evaluate(a.modules, [a.name])[a.name] for a in
               tqdm(adapters, desc="own accuracy", file=sys.stderr, leave=False, disable=None)}
    bar = tqdm(total=args.steps, desc=f"train ({args.strategy})", unit="step", file=sys.stderr, disable=None)

    def progress(done: int, total: int, loss: float) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    record = run_consolidation(model, tokenizer, adapters, args.data, cfg, args.out, evaluate=evaluate,
                               own_accuracy=own, base=args.base, force=args.force, progress=progress,
                               dtype=args.dtype)
    bar.close()
    if args.json:
        print(json.dumps(record, indent=2, default=float))
        return 0
    print(f"wrote {args.out} (PEFT, rank {record['export']['rank']}, {cfg.strategy}, {cfg.steps} steps, "
          f"{record['seconds']['train']:.0f} s training)")
    if "accuracy" in record:
        for t, acc in record["accuracy"].items():
            ret = (record.get("retention") or {}).get(t)
            print(f"  {t:<24} accuracy {acc:.3f}" + (f"  retention {ret:.3f}" if ret is not None else ""))
    return 0
