"""Inputs for the workflow tests: real PEFT adapters on a tiny Llama (causal LM or sequence classifier)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "merge"))
from merge_factories import peft_adapter, peft_delta_weights, tiny_llama  # noqa: E402

__all__ = ["copy_adapter", "peft_adapter", "peft_delta_weights", "seq_cls_adapter", "tiny_llama", "tiny_seq_cls"]


def copy_adapter(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    return dst


def tiny_seq_cls(seed: int = 1234):  # noqa: ANN201 - transformers model
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, num_labels=3, pad_token_id=0)
    return LlamaForSequenceClassification(cfg).eval()


def seq_cls_adapter(out: Path, *, seed: int, head_seed: int) -> Path:
    """A real PEFT SEQ_CLS LoRA (q/v, r=4) whose saved classifier head (`modules_to_save`) is drawn from
    `head_seed`: equal head seeds give byte-equal heads, as adapters trained with a frozen shared head."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_seq_cls(), LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                      target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    g = torch.Generator().manual_seed(seed)
    h = torch.Generator().manual_seed(head_seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g))
            elif "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=h))
    model.peft_config["default"].base_model_name_or_path = "tiny-llama-cls"
    model.save_pretrained(str(out))
    return out
