"""The GPU memory estimate of a trial: known models without loading them, hf: models from a local
config.json, and numbers that pack 4-8 SmolLM2-135M trials onto an H100 as in practice."""

from __future__ import annotations

import json
from pathlib import Path

from krpo_bench.models.config import ModelSpec
from krpo_bench.models.memory import (
    GIB,
    SMOLLM2_135M_SHAPE,
    WHOLE_DEVICE_MIB,
    model_shape,
    shape_from_config,
    trial_memory_bytes,
    trial_memory_mib,
)
from krpo_bench.spec.trial import TrainingSpec, TrialSpec
from tests.trial_specs import TINY_TASK

H100_BUDGET = 79 * GIB * 0.9  # what a worker budgets on an idle 80 GB H100
SMOLLM2 = ModelSpec(name="smollm2-135m")

SMOLLM2_135M_CONFIG = {  # HuggingFaceTB/SmolLM2-135M-Instruct config.json, the sizes
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def trial(model: dict, **training) -> TrialSpec:
    return TrialSpec.model_validate({"model": model, "task": TINY_TASK, "training": training})


def test_known_shapes_match_the_real_models() -> None:
    assert abs(SMOLLM2_135M_SHAPE.parameters - 134_515_008) / 134_515_008 < 0.001  # norms left out
    tiny = model_shape(ModelSpec(name="tiny-arith"))
    assert tiny is not None and 0.8e6 < tiny.parameters < 0.9e6  # the 0.86M-parameter testbed
    assert shape_from_config(SMOLLM2_135M_CONFIG) == SMOLLM2_135M_SHAPE


def test_four_to_eight_default_smollm2_trials_fit_on_an_h100() -> None:
    estimate = trial_memory_bytes(SMOLLM2_135M_SHAPE, SMOLLM2, TrainingSpec())
    assert 4 <= H100_BUDGET // estimate <= 8


def test_what_the_estimate_grows_and_shrinks_with() -> None:
    def estimate(model: ModelSpec = SMOLLM2, processes: int = 1, **training) -> int:
        return trial_memory_bytes(SMOLLM2_135M_SHAPE, model, TrainingSpec(**training), processes)

    base = estimate()
    weights = SMOLLM2_135M_SHAPE.parameters * 2  # bfloat16
    assert estimate(beta=0.04) - base == weights, "a reference model when beta > 0"
    assert estimate(model=ModelSpec(name="smollm2-135m", lora={"r": 16}), beta=0.04) < base, "LoRA: no reference copy"
    assert estimate(model=ModelSpec(name="smollm2-135m", dtype="float32")) > base
    assert estimate(max_completion_length=256) > base
    assert estimate(prompts_per_step=16) > base
    assert estimate(gradient_checkpointing=True) < base
    assert estimate(gradient_accumulation_steps=4) < base
    assert estimate(processes=2) < base, "each of two processes takes half the rollouts"


def test_hf_models_are_sized_from_a_local_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M_CONFIG))
    local = trial({"name": f"hf:{tmp_path}"})
    assert model_shape(local.model) == SMOLLM2_135M_SHAPE
    assert trial_memory_mib(local) == trial_memory_mib(trial({"name": "smollm2-135m"}))


def test_a_model_of_unknown_size_is_taken_to_need_a_whole_gpu(tmp_path: Path) -> None:
    assert trial_memory_mib(trial({"name": "hf:someone/not-in-the-local-cache"})) == WHOLE_DEVICE_MIB
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    assert trial_memory_mib(trial({"name": f"hf:{tmp_path}"})) == WHOLE_DEVICE_MIB
    assert trial_memory_mib(trial({"name": f"hf:{tmp_path / 'missing'}"})) == WHOLE_DEVICE_MIB
