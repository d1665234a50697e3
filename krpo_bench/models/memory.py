"""How much GPU memory one process of a trial needs, estimated without loading the model.

The estimate adds, per process: a fixed allowance for the CUDA context and library workspaces;
the weights; gradients and AdamW's two moments for the trainable parameters (in the parameters'
dtype; LoRA adapters are float32); a reference model when ``beta > 0`` (none under LoRA, where TRL
disables the adapters instead); the activations kept for backward of one micro-batch (prompt
allowance + completion tokens per rollout) with the completion logits; and the KV cache of one
generation batch. It is deliberately on the high side: the worker packs trials by it.

The model's shape is known for ``tiny-arith`` and ``smollm2-135m``; for ``hf:`` models it comes
from their ``config.json`` when that is on this machine (a local folder or the HF hub cache, never
the network). Without it the trial is taken to need a whole GPU.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krpo_bench.models.char_tokenizer import CHARACTERS, SPECIAL_TOKENS
from krpo_bench.models.config import SMOLLM2_135M, TINY_ARITH, ModelSpec

if TYPE_CHECKING:
    from krpo_bench.spec.trial import TrainingSpec, TrialSpec

MIB = 1024**2
GIB = 1024**3
CONTEXT_BYTES = 1 * GIB  # CUDA context, cuBLAS/NCCL workspaces, allocator slack
PROMPT_TOKENS = 128  # allowance for a rendered prompt (chat template included)
ACTIVATION_ELEMENTS = 18  # values per hidden unit, token and layer kept for backward (SDPA attention)
LOGIT_COPIES = 3  # completion logits, their log-softmax and their gradient
WHOLE_DEVICE_MIB = 1 << 20  # the estimate of a model of unknown size: more than any GPU holds


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide its memory."""

    parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    lora_parameters_per_rank: int  # LoRA parameters per unit of r, adapters on every linear layer


def decoder_shape(
    *,
    hidden: int,
    layers: int,
    vocab: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int | None = None,
    tied: bool = False,
    experts: int = 1,
) -> ModelShape:
    """The shape of a Llama/Qwen-style decoder (gated MLP; biases and norms left out)."""
    head_dim = head_dim or hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q * 2 + hidden * kv * 2
    mlp = 3 * hidden * intermediate * experts
    embeddings = vocab * hidden * (1 if tied else 2)
    # LoRA on a linear (n_in -> n_out) adds r x (n_in + n_out): q, k, v, o, gate, up, down
    lora = (hidden + q) * 2 + (hidden + kv) * 2 + 3 * (hidden + intermediate) * experts
    return ModelShape(embeddings + layers * (attention + mlp), hidden, layers, vocab, layers * lora)


SMOLLM2_135M_SHAPE = decoder_shape(
    hidden=576, layers=30, vocab=49152, intermediate=1536, heads=9, kv_heads=3, tied=True
)


def shape_from_config(config: Mapping[str, Any]) -> ModelShape | None:
    """A shape from a transformers ``config.json`` (Llama/Qwen/Mistral/GPT-2 key names), or None
    when it lacks the sizes."""

    def first(*keys: str) -> Any:
        return next((config[k] for k in keys if isinstance(config.get(k), int) and config[k] > 0), None)

    hidden = first("hidden_size", "n_embd", "d_model")
    layers = first("num_hidden_layers", "n_layer", "num_layers")
    vocab = first("vocab_size")
    if not (hidden and layers and vocab):
        return None
    heads = first("num_attention_heads", "n_head") or max(1, hidden // 64)
    return decoder_shape(
        hidden=hidden,
        layers=layers,
        vocab=vocab,
        intermediate=first("intermediate_size", "n_inner") or 4 * hidden,
        heads=heads,
        kv_heads=first("num_key_value_heads") or heads,
        head_dim=first("head_dim"),
        tied=config.get("tie_word_embeddings") is True,
        experts=first("num_local_experts", "num_experts") or 1,
    )


def _hf_config(source: str) -> dict[str, Any] | None:
    """The ``config.json`` of a local folder or of a hub id in the local HF cache, else None."""
    path: Path | None = Path(source) / "config.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, "config.json")
        except ValueError:  # not a valid hub id either
            return None
        path = Path(cached) if isinstance(cached, str) else None
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None


def model_shape(model: ModelSpec) -> ModelShape | None:
    """The shape of a spec's model without loading it, or None when it cannot be known here."""
    if model.name == TINY_ARITH:
        t = model.tiny  # built by tiny_arith: Qwen2, intermediate 3 x hidden, tied embeddings
        return decoder_shape(
            hidden=t.hidden_size,
            layers=t.num_layers,
            vocab=len(SPECIAL_TOKENS) + len(CHARACTERS),
            intermediate=3 * t.hidden_size,
            heads=t.num_heads,
            kv_heads=t.num_heads,
            tied=True,
        )
    if model.name == SMOLLM2_135M:
        return SMOLLM2_135M_SHAPE
    config = _hf_config(model.hf_source) if model.hf_source else None
    return shape_from_config(config) if config else None


def trial_memory_bytes(shape: ModelShape, model: ModelSpec, training: TrainingSpec, processes: int = 1) -> int:
    """Peak GPU memory of one of a trial's ``processes`` (the estimate of the module docstring)."""
    width = 4 if model.dtype == "float32" else 2  # auto is bfloat16 on a GPU
    weights = shape.parameters * width
    if model.lora is None:
        optimised = shape.parameters * width * 3  # gradients + AdamW moments, in the weights' dtype
        reference = weights if training.beta > 0 else 0
    else:
        optimised = shape.lora_parameters_per_rank * model.lora.r * 4 * 4  # float32 weights, grads, moments
        reference = 0
    rollouts = training.prompts_per_step * training.group_size
    micro = math.ceil(rollouts / (training.gradient_accumulation_steps * processes))  # rollouts per micro-batch
    tokens = PROMPT_TOKENS + training.max_completion_length
    kept = shape.num_layers * ACTIVATION_ELEMENTS  # values per hidden unit and token kept for backward
    if training.gradient_checkpointing:
        kept = shape.num_layers + ACTIVATION_ELEMENTS  # every layer's input; one layer recomputed at a time
    activations = micro * tokens * shape.hidden_size * kept * width
    logits = micro * training.max_completion_length * shape.vocab_size * LOGIT_COPIES * width
    generation = micro * training.gradient_accumulation_steps
    kv_cache = generation * tokens * shape.num_layers * 2 * shape.hidden_size * width
    return int(CONTEXT_BYTES + weights + optimised + reference + activations + logits + kv_cache)


def trial_memory_mib(spec: TrialSpec, processes: int = 1) -> int:
    """The estimate for one process of ``spec`` in MiB; :data:`WHOLE_DEVICE_MIB` for a model whose
    size is not known on this machine."""
    shape = model_shape(spec.model)
    if shape is None:
        return WHOLE_DEVICE_MIB
    return math.ceil(trial_memory_bytes(shape, spec.model, spec.training, processes) / MIB)
