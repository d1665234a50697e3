"""Models a trial can train: ``hf:<id or path>``, the packaged ``smollm2-135m``, and ``tiny-arith``.

Importing the package is cheap: the spec (``krpo_bench.models.config``) and the memory estimate
(``krpo_bench.models.memory``) are read by commands that never train, so the names below that need
torch or transformers are imported from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from krpo_bench.models.config import HF_PREFIX, LoraSpec, ModelSpec, TinyArithOptions

if TYPE_CHECKING:
    from krpo_bench.models.hf import ModelLoadError
    from krpo_bench.models.loading import LoadedModel, load_model
    from krpo_bench.models.smollm2 import converted_smollm2
    from krpo_bench.models.tiny_arith import (
        arith_answer,
        arith_pairs,
        arith_prompt,
        build_tiny_arith,
        greedy_accuracy,
        tiny_arith_report,
    )

_LAZY = {
    "ModelLoadError": "hf",
    "LoadedModel": "loading",
    "load_model": "loading",
    "converted_smollm2": "smollm2",
    **{
        name: "tiny_arith"
        for name in (
            "arith_answer",
            "arith_pairs",
            "arith_prompt",
            "build_tiny_arith",
            "greedy_accuracy",
            "tiny_arith_report",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "HF_PREFIX",
    "LoadedModel",
    "LoraSpec",
    "ModelLoadError",
    "ModelSpec",
    "TinyArithOptions",
    "arith_answer",
    "arith_pairs",
    "arith_prompt",
    "build_tiny_arith",
    "converted_smollm2",
    "greedy_accuracy",
    "load_model",
    "tiny_arith_report",
]
