"""Small trial configs shared by the tests (tiny-arith on CPU)."""

from __future__ import annotations

from typing import Any

TINY_TASK = {
    "kind": "arithmetic",
    "num_terms": [2, 2],
    "num_digits": [1, 2],
    "operators": ["+"],
    "parentheses": False,
    "unary_minus": False,
    "templates": ["{expr}="],
    "compact": True,
    "rewards": [{"name": "exact"}],
    "train_size": 512,
    "test_size": 64,
}


def tiny_trial(estimator: dict[str, Any] | None = None, steps: int = 30, seed: int = 0, **training: Any) -> dict:
    """A tiny-arith trial config; ``training`` overrides the training block."""
    return {
        "name": f"tiny-{(estimator or {'name': 'grpo'})['name']}",
        "model": {"name": "tiny-arith"},
        "task": dict(TINY_TASK),
        "estimator": estimator or {"name": "grpo"},
        "training": {
            "group_size": 8,
            "prompts_per_step": 8,
            "learning_rate": 3e-5,
            "max_completion_length": 5,
            "max_steps": steps,
            "seed": seed,
            "eval_every": 0,
            "pass_at_k": 2,
            "checkpoint_every": 10,
            **training,
        },
    }


def tiny_ablation(name: str, seeds: int = 1, **base: Any) -> dict:
    """A one-variant (grpo) ablation of 2-step tiny-arith trials, for tests that submit but never
    train; ``base`` overrides blocks of the base trial (``model=``, ``task=``)."""
    trial = {"model": {"name": "tiny-arith"}, "task": dict(TINY_TASK), "training": {"max_steps": 2}, **base}
    return {
        "name": name,
        "kind": "ablation",
        "seeds": seeds,
        "base": trial,
        "variants": {"grpo": {"estimator": {"name": "grpo"}}},
    }
