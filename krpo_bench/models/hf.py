"""Loading any causal LM by hub id or local folder, with the dtype policy and optional LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from krpo_bench.models.config import LoraSpec, ModelSpec


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    num_parameters: int


def resolve_dtype(spec: ModelSpec, device: str) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 elsewhere; otherwise the named dtype."""
    if spec.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, spec.dtype)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding and a pad token, as TRL's generation expects."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_lora(model: Any, lora: LoraSpec) -> Any:
    """Wrap ``model`` in a peft LoRA adapter (only adapter weights train)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError("LoRA needs peft: pip install 'krpo-bench[lora]'") from exc
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_pretrained(
    source: str | Path, spec: ModelSpec, device: str, **kwargs: Any
) -> LoadedModel:
    """A causal LM and its tokenizer from a hub id or folder, on ``device``, LoRA applied if asked."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=resolve_dtype(spec, device), trust_remote_code=spec.trust_remote_code, **kwargs
        )
    except OSError as exc:
        raise RuntimeError(
            f"cannot load model {spec.name!r} from {source}: {exc}. Offline, use a local folder "
            "('hf:/path/to/model'), 'smollm2-135m' or 'tiny-arith'."
        ) from exc
    model.to(device)
    if spec.lora is not None:
        model = apply_lora(model, spec.lora)
    return LoadedModel(
        model=model,
        tokenizer=prepare_tokenizer(tokenizer),
        name=spec.name,
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
