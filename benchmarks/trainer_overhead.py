"""Step-time overhead of our trainer (estimator ``krpo``) against stock TRL GRPOTrainer.

Same tiny-arith config and seed for both, runs interleaved (stock, ours, ours, stock, ...) so that
machine load hits both alike; each run starts from the same weights. Every step of every run is
timed (the first step of a run excluded); the ratio compares the medians of the pooled step times,
which a load spike on a few steps does not move the way it moves a run's mean. Prints per-run
medians and, as its last line, the ratio of medians (ours / stock; goal <= 1.03).
    python -m benchmarks.trainer_overhead [--steps 30] [--rounds 6]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from trl import GRPOTrainer

from krpo_bench.advantages import get_estimator
from krpo_bench.models import load_model
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.training.trainer import BaselineGRPOTrainer
from krpo_bench.training.trial import grpo_config

TINY_STUDY_TRIAL = {
    "name": "overhead",
    "model": {"name": "tiny-arith"},
    "task": {
        "kind": "arithmetic", "num_terms": [2, 2], "num_digits": [1, 2], "operators": ["+"],
        "parentheses": False, "unary_minus": False, "templates": ["{expr}="], "compact": True,
        "rewards": [{"name": "exact"}], "train_size": 1000, "test_size": 16,
    },
    "training": {"group_size": 8, "prompts_per_step": 8, "max_completion_length": 5, "checkpoint_every": 100000},
}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def one_run(ours: bool, spec: TrialSpec, task, loaded, initial_state: dict, out: Path) -> list[float]:
    """Step times (first step excluded) of one training run from ``initial_state``."""
    set_seed(spec.training.seed)
    model = copy.deepcopy(loaded.model)
    model.load_state_dict(initial_state)
    args = grpo_config(spec, out, use_cuda=torch.cuda.is_available(), bf16=False, reward_weights=list(task.reward_weights))
    args.save_strategy = "no"
    kwargs = dict(model=model, reward_funcs=task.reward_funcs, args=args, train_dataset=task.train, processing_class=loaded.tokenizer)
    trainer = BaselineGRPOTrainer(**kwargs, estimator=get_estimator("krpo")) if ours else GRPOTrainer(**kwargs)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    config = copy.deepcopy(TINY_STUDY_TRIAL)
    config["training"]["max_steps"] = args.steps
    spec = TrialSpec.model_validate(config)
    task = build_task(spec.task)
    loaded = load_model(spec.model, device="cuda" if torch.cuda.is_available() else "cpu")
    initial = copy.deepcopy(loaded.model.state_dict())
    stock: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for is_ours in order:
                times = one_run(is_ours, spec, task, loaded, initial, Path(tmp) / f"{r}-{is_ours}")
                (ours if is_ours else stock).extend(times)
                label = "ours (krpo)" if is_ours else "stock GRPO"
                print(f"round {r} {label}: median {statistics.median(times) * 1000:.1f} ms/step", flush=True)
    ratio = statistics.median(ours) / statistics.median(stock)
    print(f"median stock {statistics.median(stock) * 1000:.1f} ms/step, ours {statistics.median(ours) * 1000:.1f} ms/step")
    print(f"step-time ratio ours/stock: {ratio:.3f} (goal <= 1.03)")


if __name__ == "__main__":
    main()
