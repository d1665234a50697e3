"""Stable identities of specs: what a trial id or a study file's key hashes.

An id must not move when a release adds a field with a default, or every run folder, checkpoint and
study made before the upgrade is stranded. A spec's identity is its JSON dump less the fields added
after identities were frozen (those missing from :data:`HASHED_FIELDS`) that hold their default.
The fields known when ids were frozen are always hashed, so ids made before this module existed
stay what they were; a later field counts only once it is set to something other than its default.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

HASHED_FIELDS: dict[str, frozenset[str]] = {
    "TrialSpec": frozenset({"name", "trial_id", "model", "task", "estimator", "training", "experiment"}),
    "ModelSpec": frozenset({"name", "dtype", "trust_remote_code", "lora", "tiny"}),
    "LoraSpec": frozenset({"r", "alpha", "dropout", "target_modules"}),
    "TinyArithOptions": frozenset(
        {
            "warmup_steps",
            "carry_drop_rate",
            "seed",
            "hidden_size",
            "num_layers",
            "num_heads",
        }
    ),
    "ArithmeticTask": frozenset(
        {
            "prompt_style",
            "answer_extraction",
            "reward_noise",
            "rewards",
            "train_size",
            "test_size",
            "seed",
            "kind",
            "num_terms",
            "num_digits",
            "operators",
            "parentheses",
            "unary_minus",
            "templates",
            "compact",
        }
    ),
    "RewardNoise": frozenset({"flip", "gaussian"}),
    "RewardSpec": frozenset({"name", "weight"}),
    "GSMSymbolicTask": frozenset(
        {
            "prompt_style",
            "answer_extraction",
            "reward_noise",
            "rewards",
            "train_size",
            "test_size",
            "seed",
            "kind",
            "difficulty",
        }
    ),
    "JsonlTask": frozenset(
        {
            "prompt_style",
            "answer_extraction",
            "reward_noise",
            "rewards",
            "train_size",
            "test_size",
            "seed",
            "kind",
            "path",
            "test_path",
            "question_field",
            "answer_field",
            "id_field",
        }
    ),
    "HFTask": frozenset(
        {
            "prompt_style",
            "answer_extraction",
            "reward_noise",
            "rewards",
            "train_size",
            "test_size",
            "seed",
            "kind",
            "dataset",
            "config",
            "split",
            "test_split",
            "question_field",
            "answer_field",
            "answer_extract",
        }
    ),
    "GRPOParams_grpo": frozenset({"shuffle_order", "advantage_noise", "scale", "eps", "name"}),
    "EstimatorParams_dr_grpo": frozenset({"shuffle_order", "advantage_noise", "name"}),
    "EstimatorParams_rloo": frozenset({"shuffle_order", "advantage_noise", "name"}),
    "ReinforcePPParams_reinforce_pp_baseline": frozenset({"shuffle_order", "advantage_noise", "eps", "name"}),
    "KalmanParams_krpo": frozenset(
        {
            "shuffle_order",
            "advantage_noise",
            "Q",
            "R",
            "x0",
            "P0",
            "estimate",
            "normalize",
            "eps",
            "name",
        }
    ),
    "KRPOPriorParams_krpo_prior": frozenset(
        {
            "shuffle_order",
            "advantage_noise",
            "Q",
            "R",
            "x0",
            "P0",
            "estimate",
            "normalize",
            "eps",
            "name",
        }
    ),
    "KalmanParams_krpo_persistent": frozenset(
        {
            "shuffle_order",
            "advantage_noise",
            "Q",
            "R",
            "x0",
            "P0",
            "estimate",
            "normalize",
            "eps",
            "name",
        }
    ),
    "EstimatorParams_opo": frozenset({"shuffle_order", "advantage_noise", "name"}),
    "GPGParams_gpg": frozenset({"shuffle_order", "advantage_noise", "alpha", "name"}),
    "GRPOPassKParams_grpo_passk": frozenset({"shuffle_order", "advantage_noise", "norm_by_std", "eps", "name"}),
    "EstimatorParams_remax": frozenset({"shuffle_order", "advantage_noise", "name"}),
    "EstimatorParams_maxrl": frozenset({"shuffle_order", "advantage_noise", "name"}),
    "EstimatorParams_js_shrinkage": frozenset({"shuffle_order", "advantage_noise", "name"}),
    "RAEParams_rae": frozenset({"shuffle_order", "advantage_noise", "decay", "per_prompt", "name"}),
    "RunningNormParams_running_norm": frozenset({"shuffle_order", "advantage_noise", "center", "scale", "eps", "name"}),
    "EBPOParams_ebpo": frozenset({"shuffle_order", "advantage_noise", "normalize", "eps", "name"}),
    "TrainingSpec": frozenset(
        {
            "group_size",
            "prompts_per_step",
            "gradient_accumulation_steps",
            "learning_rate",
            "lr_scheduler",
            "beta",
            "epsilon",
            "loss_type",
            "num_iterations",
            "max_completion_length",
            "max_steps",
            "temperature",
            "seed",
            "eval_every",
            "eval_size",
            "pass_at_k",
            "eval_batch_size",
            "checkpoint_every",
            "gradient_checkpointing",
        }
    ),
    "StudySpec": frozenset(
        {
            "name",
            "description",
            "kind",
            "base",
            "variants",
            "grid",
            "seeds",
            "space",
            "sampler",
            "sampler_seed",
            "pruner",
            "objective",
            "analysis",
            "n_trials",
            "parallelism",
            "seeds_per_trial",
            "resources",
            "priority",
        }
    ),
    "SearchParam": frozenset({"type", "low", "high", "step", "choices"}),
    "Pruner": frozenset({"type", "warmup_steps", "startup_trials"}),
    "Objective": frozenset({"metric", "direction"}),
    "Analysis": frozenset({"target_effect"}),
    "Resources": frozenset({"gpus_per_trial", "max_attempts", "timeout_s"}),
}
"""Every spec model's fields at release 0.1.0, when identities were frozen, by class name. Never
edit: a field added later is hashed only when set to a non-default value (so the default of such a
field must never change: add a new field instead); one listed here is hashed always."""


def identity_payload(spec: BaseModel, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """``spec``'s JSON dump (less the top-level ``exclude`` fields) without the later-added fields
    that hold their default, at any depth."""
    return _prune(spec, spec.model_dump(mode="json", exclude=set(exclude)))


def identity_hash(spec: BaseModel, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """SHA-1 (hex) of :func:`identity_payload` as sorted JSON."""
    payload = json.dumps(identity_payload(spec, exclude), sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def study_file_key(spec: BaseModel) -> str:
    """The idempotency key under which ``krpo-bench run`` finds a study file's earlier study:
    ``run:`` and the SHA-1 of :func:`identity_payload` as compact sorted JSON."""
    payload = json.dumps(identity_payload(spec), sort_keys=True, separators=(",", ":"), default=str)
    return "run:" + hashlib.sha1(payload.encode()).hexdigest()


def _prune(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    known = HASHED_FIELDS.get(type(model).__name__, frozenset())
    for name in type(model).model_fields:
        if name not in dumped:
            continue
        if name not in known and not model.model_dump(include={name}, exclude_defaults=True):
            del dumped[name]
        else:
            _prune_value(getattr(model, name), dumped[name])
    return dumped


def _prune_value(value: Any, dumped: Any) -> None:
    if isinstance(value, BaseModel):
        _prune(value, dumped)
    elif isinstance(value, (list, tuple)):
        for item, item_dumped in zip(value, dumped):
            _prune_value(item, item_dumped)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (BaseModel, list, tuple, dict)):
                _prune_value(item, dumped[key])
