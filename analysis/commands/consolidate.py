"""`adapter-atlas consolidate`: N task adapters into one by short mixed-task training (CPI-FT and baselines).

    adapter-atlas consolidate sample_adapters/format_date sample_adapters/math_add ... \\
        --data sample_adapters/tasks --strategy isolation --steps 50 --out consolidated/

Task names are the adapter directory names; task data is DIR/<task>/{train,eval}.jsonl, every file validated
before the model loads. --model (a local folder, a .gguf file or a model id in the local Hugging Face cache;
default the sample base) is the model trained on and measured on: the written adapter_config.json and the
recipe both name it. Writes a PEFT adapter, training.json (loss curve, seconds, per-task accuracy measured on
the written adapter, retention; a task whose own adapter scores 0 has no retention and is named, not
averaged) and recipe.json. Progress with ETA on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.commands import options as opt
from analysis.errors import AtlasError


def register(subparsers: argparse._SubParsersAction) -> None:
    from analysis.consolidate.arms import ARMS, STRATEGIES

    p = subparsers.add_parser(
        "consolidate", help="train one adapter for every task (isolation, multitask, sequential, full fine-tuning...)",
        description="Consolidate task adapters into one by short fine-tuning on the task mix.")
    p.add_argument("paths", nargs="+", metavar="ADAPTER", help="adapter directories (name = task)")
    p.add_argument("--data", required=True, metavar="DIR", help="task data: DIR/<task>/{train,eval}.jsonl")
    p.add_argument("--strategy", required=True, choices=STRATEGIES, metavar="ARM",
                   help="; ".join(f"{a.name}: {a.help}" for a in ARMS.values()))
    p.add_argument("--steps", type=opt.count(10**6), required=True, help="optimizer steps (the same budget for every strategy)")
    p.add_argument("--rank", type=opt.count(4096), default=16, help="rank R of the fresh LoRA block (default 16)")
    p.add_argument("--batch-size", type=opt.BATCH, default=8)
    p.add_argument("--lr", type=opt.LEARNING_RATE, default=3e-3)
    p.add_argument("--seed", type=opt.SEED, default=0)
    p.add_argument("--cores", default="magnitude", choices=("magnitude", "saliency"),
                   help="core rows by |dW| (paper) or by |dW| x input activation RMS on the task's prompts")
    p.add_argument("--p", type=opt.fraction(open_low=True), default=0.01, help="core rows per task and module (default 0.01, the paper's)")
    p.add_argument("--stages", type=opt.count(1000), default=3,
                   help="sequential arms: K consecutive task groups (default 3)")
    p.add_argument("--full-lr", type=opt.LEARNING_RATE, default=1e-4, help="learning rate of the full fine-tuning arms")
    p.add_argument("--export-rank", type=opt.count(4096), default=64,
                   help="full fine-tuning arms: rank of the written LoRA (the exact update goes to delta.safetensors)")
    p.add_argument("--no-match-params", action="store_true",
                   help="fresh LoRA arms train rank --rank only, not R0 + rank (unequal trainable parameters)")
    from analysis.commands.evaluate import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--base", dest="model", default=None, help=argparse.SUPPRESS)  # the former name of --model
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


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from analysis.adapters import load_adapter
    from analysis.commands.evaluate import model_spec
    from analysis.consolidate.data import load_rows
    from analysis.consolidate.export import prepare_out
    from analysis.consolidate.run import run_consolidation
    from analysis.consolidate.train import ConsolidateConfig

    torch.set_num_threads(max(1, args.threads))
    prepare_out(args.out, args.force)
    if not Path(args.data).is_dir():
        raise AtlasError(f"--data {args.data}: no such directory")
    cfg = ConsolidateConfig(strategy=args.strategy, steps=args.steps, rank=args.rank, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, cores=args.cores, p=args.p, stages=args.stages,
                            full_lr=args.full_lr, export_rank=args.export_rank, match_params=not args.no_match_params)
    cfg.check()
    spec = model_spec(args, args.model)
    adapters = [load_adapter(Path(p)) for p in args.paths]
    for a in adapters:  # the training data, read and validated before the model loads
        load_rows(args.data, a.name, "train")
    data = None
    if not args.no_eval:
        from analysis.evaluation import load_data

        data = load_data([args.data], metric="exact").select([a.name for a in adapters])
    from analysis.evaluation import Evaluator, TaskSet, load_model
    from analysis.workflow.rank import check_export_rank

    check_export_rank(adapters, args.rank, "--rank")  # a block wider than every module only costs memory
    loaded = load_model(spec)
    evaluator = Evaluator(loaded, data or TaskSet(()), limit=args.limit)
    for w in evaluator.check(adapters):  # every module fits the model, before any training
        print(f"warning: {w}", file=sys.stderr)
    model, tokenizer = loaded.model, loaded.tokenizer
    evaluate = None if args.no_eval else evaluator
    own = None
    if evaluate is not None:
        own = {a.name: evaluate(a.modules, [a.name])[a.name] for a in
               tqdm(adapters, desc="own accuracy", file=sys.stderr, leave=False, disable=None)}
    bar = tqdm(total=args.steps, desc=f"train ({args.strategy})", unit="step", file=sys.stderr, disable=None)

    def progress(done: int, total: int, loss: float) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    record = run_consolidation(model, tokenizer, adapters, args.data, cfg, args.out, evaluate=evaluate,
                               own_accuracy=own, base=loaded.identity.as_dict(), force=args.force,
                               progress=progress, dtype=args.dtype)
    bar.close()
    if args.json:
        print(json.dumps(record, indent=2, default=float))
        return 0
    print(f"wrote {args.out} (PEFT, rank {record['export']['rank']}, {cfg.strategy}, {cfg.steps} steps, "
          f"{record['seconds']['train']:.0f} s training) for base model {record['recipe']['base']}")
    if "accuracy" in record:
        for t, acc in record["accuracy"].items():
            ret = (record.get("retention") or {}).get(t)
            print(f"  {t:<24} accuracy {acc:.3f}" + (f"  retention {ret:.3f}" if ret is not None else
                                                     "  retention undefined (own accuracy 0)"))
        if record.get("mean_retention") is not None:
            left = record.get("retention_undefined") or []
            print(f"  mean retention {record['mean_retention']:.3f}"
                  + (f" (over {len(record['retention']) - len(left)} tasks; left out: {', '.join(left)})"
                     if left else ""))
    return 0
