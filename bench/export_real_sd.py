"""Real SD 1.5 LoRAs merged and exported as diffusers and kohya, loaded by diffusers into a UNet with the real
SD 1.5 shapes (the published SD 1.5 UNet config, built on the meta device and materialised as zeros: no
download, no random init), and compared module by module with the intended update. Prints JSON.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/export_real_sd.py [--rank R --method ties] [--dtype fp16]

With zero base weights, the fused weight after `load_lora_weights` + `fuse_lora` IS the weight change the
loader applies. Needs ../shared/real_adapters (catundchat, timohavdk, bbrokesoul) and ~4 GB of memory.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REAL = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "real_adapters",
                          Path("/work/shared/real_adapters")) if p.is_dir()), Path("../shared/real_adapters"))
INPUTS = [REAL / "catundchat-sd15-lora" / "pytorch_lora_weights.safetensors",
          REAL / "timohavdk-sd-lora" / "2100-lora.safetensors", REAL / "bbrokesoul-t2i-peft"]
WEIGHTS = {"diffusers": None, "kohya": "lora.safetensors"}


def sd15_pipeline(tmp: Path):  # noqa: ANN201 - a StableDiffusionPipeline with the real SD 1.5 UNet shapes
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "analysis" / "export"))
    from diffusers import UNet2DConditionModel
    from sd_tiny import tiny_pipeline

    pipe = tiny_pipeline(tmp)  # tiny VAE / text encoder / tokenizer: these LoRAs touch the UNet only
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
    unet = unet.to_empty(device="cpu")
    with torch.no_grad():
        for p in unet.parameters():
            p.zero_()
    pipe.register_modules(unet=unet)
    return pipe


def check(run, fmt: str, tmp: Path) -> dict:  # noqa: ANN001
    out = run.write(tmp / fmt)
    pipe = sd15_pipeline(tmp)
    t = time.perf_counter()
    kwargs = {"weight_name": WEIGHTS[fmt]} if WEIGHTS[fmt] else {}
    pipe.load_lora_weights(str(out), adapter_name="merged", **kwargs)
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    pipe.unload_lora_weights()
    weights = dict(pipe.unet.named_parameters())
    errors, factors = {}, {}
    for m, d in run.written_modules().items():
        want = d.dense(torch.float64)
        got = weights[f"{m}.weight"].detach().double().reshape(want.shape[0], -1)
        errors[m] = float((got - want).norm() / want.norm())
        factors[m] = float((got * want).sum() / (want * want).sum())
    worst = max(errors, key=errors.get)
    return {"format": fmt, "modules": len(errors), "max_relative_error": errors[worst], "worst_module": worst,
            "factor_range": [min(factors.values()), max(factors.values())], "load_s": time.perf_counter() - t,
            "file_bytes": sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors"),
            "export": {k: run.evidence["export"].get(k) for k in ("rank", "dtype", "relative_error", "storage_error")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="linear")
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    from analysis.workflow import AdapterSet, ExportSpec, run_merge

    aset = AdapterSet.from_paths(INPUTS)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("diffusers", "kohya"):
            run = run_merge(aset, args.method, None, None, ExportSpec(format=fmt, rank=args.rank, dtype=args.dtype),
                            preview=False)
            ranks = sorted({x.rank for x in run.written_modules().values()})
            rows.append({**check(run, fmt, Path(d)), "ranks": ranks,
                         "not_shared": len(run.evidence["modules"]["not_shared"])})
    print(json.dumps({"inputs": [p.name for p in INPUTS], "method": args.method, "rank": args.rank,
                      "dtype": args.dtype, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
