"""Tiny random-weight model folders with a real (byte-level) tokenizer, saved like any local model.

`model_folder(tmp, "llama")` / `"gpt2"` / `"qwen2"` writes config.json, model.safetensors and tokenizer
files in well under a second, no download: a character-level BPE without merges (printable ASCII and the
newline, one token each, plus <eos> and <pad>), so every generated text decodes and re-tokenizes 1:1, and
a chat template simple enough that a chat row renders exactly like its prompt/answer twin (`TWIN_TEMPLATE`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
VOCAB = 2 + len(CHARS)  # <eos> = 0, <pad> = 1, then one token per character
EOS, PAD = 0, 1
# user turn as raw text, assistant turn as " answer\n": the prompt/answer protocol's own encoding
TWIN_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ ' ' + m['content'] + '\n' }}"
                 "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")


def char_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": EOS, "<pad>": PAD, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = TWIN_TEMPLATE
    return fast


def tiny_model(arch: str, seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                         eos_token_id=EOS, bos_token_id=EOS, pad_token_id=PAD)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    # larger weights than the default init, so greedy outputs vary and NLL differs clearly between routes
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model.eval()


def model_folder(root: Path, arch: str, seed: int = 0) -> Path:
    """A saved model folder (safetensors + tokenizer) of a tiny random `arch` model."""
    out = root / f"tiny-{arch}"
    tiny_model(arch, seed).save_pretrained(str(out))
    char_tokenizer().save_pretrained(str(out))
    return out


def page_base_folder(root: Path, layers: int = 6) -> Path:
    """A tiny random Llama folder that the committed page fixture adapters fit (tests/fixtures/page_adapters:
    6 layers, hidden 64, k/v 32 wide), so the Merge page can measure them in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    out = root / "tiny-page-base"
    LlamaForCausalLM(cfg).eval().save_pretrained(str(out))
    char_tokenizer().save_pretrained(str(out))
    return out


def page_task_folder(root: Path, names: list[str], rows: int = 8) -> Path:
    """DIR/<adapter name>/eval.jsonl of short prompt/answer rows: one task per fixture adapter, named like it."""
    import json

    out = root / "page_tasks"
    for k, name in enumerate(names):
        (out / name).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"prompt": f"Add {i} and {k}.\nOutput:", "answer": str(i + k)}) for i in range(rows)]
        (out / name / "eval.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def task_adapters(folder: Path, root: Path, tasks: list[str], seed: int) -> list[Path]:
    """One saved PEFT adapter per task (r 4, q/v) on the model folder, at root/adapters/<task>: named like its task,
    seeded `seed + k`."""
    from transformers import AutoModelForCausalLM

    from helpers.tiny import save_peft_adapter

    paths = []
    for k, task in enumerate(tasks):
        base = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        save_peft_adapter(base, root / "adapters" / task, seed=seed + k, r=4, lora_alpha=8, base_model=str(folder),
                          target_modules=["q_proj", "v_proj"])
        paths.append(root / "adapters" / task)
    return paths
