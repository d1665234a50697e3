"""Transformers model folders: load one (hub id or path), make its tokenizer TRL-ready, add LoRA, cache builds.

A spec's local folder is opened only under the data roots, checked where it is opened
(:mod:`krpo_bench.data_roots`); a hub id that names a path in the worker's working directory is
refused (``from_pretrained`` would read that folder instead of the hub)."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from krpo_bench.data_roots import OutsideDataRoots, data_folder
from krpo_bench.models.config import Dtype, LoraSpec
from krpo_bench.settings import cache_dir

MARKER_FILE = "BUILD_COMPLETE"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the model and the cause."""


def resolve_dtype(dtype: Dtype, device: str) -> torch.dtype:
    """The torch dtype of a spec's ``dtype``: ``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return _DTYPES[dtype]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    """Make a tokenizer usable for batched generation in TRL: eos and pad set, padding on the left."""
    if tokenizer.eos_token is None:
        raise ModelLoadError(f"the tokenizer of model {name!r} has no eos_token; set one in its folder")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_pretrained(
    source: str | Path,
    *,
    name: str,
    dtype: torch.dtype,
    device: str,
    trust_remote_code: bool = False,
    shown: str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id or folder, on ``device`` in ``dtype``.

    Failures (unknown id, offline hub, missing files) are raised as :class:`ModelLoadError` naming
    the model and ``source`` as ``shown`` (default: as given); ``kwargs`` go to both
    ``from_pretrained`` calls (e.g. ``gguf_file``).
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        shown = shown or str(source)
        raise ModelLoadError(
            f"could not load model {name!r} from {shown!r}: {str(error).replace(str(source), shown)}. A hub id needs network "
            f"access (or a filled local HF cache); a path must be a folder saved with save_pretrained."
        ) from error
    tokenizer = prepare_tokenizer(tokenizer, name)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def is_local_source(source: str) -> bool:
    """Whether a model source names a local folder (absolute, or under ``~``) rather than a hub id."""
    return source.startswith(("/", "~"))


def load_spec_source(
    source: str, field: str, *, name: str, dtype: torch.dtype, device: str, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model a spec's ``field`` names by ``source``: a local folder only under this
    process's data roots (opened without following a link swapped in after submission), a hub id only
    when it names no path in the working directory. Errors name the field, never a file's contents."""
    if not is_local_source(source):
        if os.path.lexists(source):
            raise ModelLoadError(
                f"{field}: {source[:200]!r} names a path in the worker's working directory, not only a "
                "hub model; give a local model folder by its absolute path under the data roots"
            )
        return load_pretrained(source, name=name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    try:
        with data_folder(source, field) as folder:
            model, tokenizer = load_pretrained(
                folder, name=name, dtype=dtype, device=device, trust_remote_code=trust_remote_code, shown=source
            )
    except OutsideDataRoots as error:
        raise ModelLoadError(str(error)) from None
    except (FileNotFoundError, NotADirectoryError) as error:
        raise ModelLoadError(
            f"{field}: could not load model {name!r}: {source[:200]!r} is no folder ({type(error).__name__})"
        ) from None
    model.config.name_or_path = tokenizer.name_or_path = source  # not the descriptor path it was read through
    return model, tokenizer


def apply_lora(model: PreTrainedModel, lora: LoraSpec) -> torch.nn.Module:
    """Wrap ``model`` in a peft LoRA adapter; only the adapter weights stay trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ModelLoadError("LoRA needs peft: pip install 'krpo-bench[lora]'") from error
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def cached_model_folder(name: str, build: Callable[[Path], None]) -> Path:
    """``cache/models/<name>``, built once by ``build(folder)`` and published atomically.

    ``build`` writes into a temporary sibling folder; a marker file is added last and the folder is
    renamed into place, so a crash or two concurrent builders never leave a half-written model. A
    lock file makes concurrent builders on one machine (the trials of a fresh study) wait for the
    first one instead of each building the same model.
    """
    parent = cache_dir("models")
    target = parent / name
    if (target / MARKER_FILE).exists():
        return target
    with open(parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MARKER_FILE).exists():
            return target
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))
        scratch.chmod(0o755)
        try:
            build(scratch)
            (scratch / MARKER_FILE).write_text("ok\n")
            try:
                os.rename(scratch, target)
            except OSError:
                if not (target / MARKER_FILE).exists():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target
