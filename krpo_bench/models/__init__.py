"""Models a trial can train: ``hf:<id or path>``, the packaged ``smollm2-135m``, and ``tiny-arith``."""

from __future__ import annotations

from krpo_bench.models.config import HF_PREFIX, SMOLLM2_135M, TINY_ARITH, LoraSpec, ModelSpec, TinyArithOptions
from krpo_bench.models.hf import LoadedModel, load_pretrained
from krpo_bench.models.smollm2 import converted_smollm2
from krpo_bench.models.tiny_arith import build_tiny_arith


def load_model(spec: ModelSpec, device: str = "cpu") -> LoadedModel:
    """The model and tokenizer ``spec`` names, on ``device`` (built or converted on first use)."""
    if spec.name == TINY_ARITH:
        return load_pretrained(build_tiny_arith(spec.tiny), spec, device)
    if spec.name == SMOLLM2_135M:
        return load_pretrained(converted_smollm2(), spec, device)
    return load_pretrained(spec.hf_source, spec, device)


__all__ = [
    "HF_PREFIX",
    "LoadedModel",
    "LoraSpec",
    "ModelSpec",
    "TinyArithOptions",
    "build_tiny_arith",
    "converted_smollm2",
    "load_model",
]
