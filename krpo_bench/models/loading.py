"""Loading a model a trial trains: ``hf:<id or path>`` (a path only under the data roots), the packaged
``smollm2-135m``, ``tiny-arith``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from krpo_bench.models.config import TINY_ARITH, ModelSpec
from krpo_bench.models.hf import apply_lora, load_pretrained, load_spec_source, resolve_dtype
from krpo_bench.models.smollm2 import converted_smollm2
from krpo_bench.models.tiny_arith import build_tiny_arith


@dataclass
class LoadedModel:
    """A model ready to train (LoRA-wrapped when asked) with its TRL-ready tokenizer."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    num_parameters: int
    warm_start_seed: int | None = None
    """The seed of the tiny-arith build the model starts from (None for the other models)."""

    @property
    def num_trainable_parameters(self) -> int:
        """Parameters with ``requires_grad`` (only the adapters under LoRA)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def load_model(spec: ModelSpec, device: str = "cpu", trial_seed: int = 0) -> LoadedModel:
    """The model and tokenizer ``spec`` names, on ``device`` (built or converted on first use);
    tiny-arith starts from the warm start of ``trial_seed`` (see ``TinyArithOptions.warm_start``)."""
    dtype = resolve_dtype(spec.dtype, device)
    warm_start = spec.tiny.warm_start(trial_seed) if spec.name == TINY_ARITH else None
    if spec.hf_source is not None:
        model, tokenizer = load_spec_source(
            spec.hf_source,
            "model.name",
            name=spec.name,
            dtype=dtype,
            device=device,
            trust_remote_code=spec.trust_remote_code,
        )
    else:
        built = build_tiny_arith(warm_start) if warm_start is not None else converted_smollm2()
        model, tokenizer = load_pretrained(
            built, name=spec.name, dtype=dtype, device=device, trust_remote_code=spec.trust_remote_code
        )
    if spec.lora is not None:
        model = apply_lora(model, spec.lora)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=spec.name,
        num_parameters=sum(p.numel() for p in model.parameters()),
        warm_start_seed=warm_start.seed if warm_start is not None else None,
    )
