"""Step-time overhead of our trainer (estimator ``krpo``) against stock TRL GRPOTrainer.

Both trainers are built on the same tiny-arith config, seed and starting weights and train in one
process, taking turns step by step (stock step 1, ours step 1, stock step 2, ...; the order flips
every round), so that whatever else the machine is doing hits both alike at the same moment. Each
step starts from the same torch seed for both, and the learning rate is 1e-12: the optimizer does
all its work but the weights stay put, so both generate the same completions at every step and
the ratio measures the trainer, not how KRPO's larger advantages change what the model generates
next (completion lengths drive a step's cost). The ratio is the median over steps of the paired
ratios ours/stock (the first step of a round excluded). Prints per-round medians and, as its last
line, that ratio (goal <= 1.03).
    python -m benchmarks.trainer_overhead [--steps 40] [--rounds 4]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, set_seed
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
        "kind": "arithmetic",
        "num_terms": [2, 2],
        "num_digits": [1, 2],
        "operators": ["+"],
        "parentheses": False,
        "unary_minus": False,
        "templates": ["{expr}="],
        "compact": True,
        "rewards": [{"name": "exact"}],
        "train_size": 1000,
        "test_size": 16,
    },
    "training": {
        "group_size": 8,
        "prompts_per_step": 8,
        "max_completion_length": 5,
        "checkpoint_every": 100000,
        "learning_rate": 1e-12,
    },
}
TURN_TIMEOUT_S = 600.0


class TakeTurns(TrainerCallback):
    """Times each step of one trainer and hands the turn to the other trainer after it."""

    def __init__(self, mine: threading.Event, theirs: threading.Event, seed: int) -> None:
        self.mine, self.theirs, self.seed = mine, theirs, seed
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.mine.wait(TURN_TIMEOUT_S):
            raise TimeoutError("the other trainer never handed over its turn")
        self.mine.clear()
        torch.manual_seed(self.seed + state.global_step)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)
        self.theirs.set()

    def on_train_end(self, args, state, control, **kwargs):
        self.theirs.set()


def build_trainer(ours: bool, spec: TrialSpec, task, loaded, initial_state: dict, out: Path) -> GRPOTrainer:
    """A quiet trainer (ours with ``krpo``, or stock) from ``initial_state``, saving nothing."""
    set_seed(spec.training.seed)
    model = copy.deepcopy(loaded.model)
    model.load_state_dict(initial_state)
    args = grpo_config(
        spec, out, use_cuda=torch.cuda.is_available(), bf16=False, reward_weights=list(task.reward_weights)
    )
    args.save_strategy = "no"
    kwargs = dict(
        model=model,
        reward_funcs=task.reward_funcs,
        args=args,
        train_dataset=task.train,
        processing_class=loaded.tokenizer,
    )
    trainer = BaselineGRPOTrainer(**kwargs, estimator=get_estimator("krpo")) if ours else GRPOTrainer(**kwargs)
    trainer.remove_callback(PrinterCallback)  # both quiet: printing logs is not what is measured
    return trainer


def paired_round(
    first_is_ours: bool, spec: TrialSpec, task, loaded, initial: dict, out: Path
) -> tuple[list[float], list[float]]:
    """Step times (stock, ours) of one round in which the two trainers alternate steps."""
    trainers = {ours: build_trainer(ours, spec, task, loaded, initial, out / str(ours)) for ours in (False, True)}
    turns = {False: threading.Event(), True: threading.Event()}
    timers = {ours: TakeTurns(turns[ours], turns[not ours], spec.training.seed) for ours in (False, True)}
    for ours, trainer in trainers.items():
        trainer.add_callback(timers[ours])
    turns[first_is_ours].set()
    errors: list[BaseException] = []

    def train(ours: bool) -> None:
        try:
            trainers[ours].train()
        except BaseException as err:
            errors.append(err)
            turns[not ours].set()

    threads = [threading.Thread(target=train, args=(ours,)) for ours in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return timers[False].times[1:], timers[True].times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    config = copy.deepcopy(TINY_STUDY_TRIAL)
    config["training"]["max_steps"] = args.steps
    spec = TrialSpec.model_validate(config)
    task = build_task(spec.task)
    loaded = load_model(spec.model, device="cuda" if torch.cuda.is_available() else "cpu")
    initial = copy.deepcopy(loaded.model.state_dict())
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            stock, ours = paired_round(r % 2 == 1, spec, task, loaded, initial, Path(tmp) / str(r))
            ratios += [o / s for s, o in zip(stock, ours)]
            print(
                f"round {r} ({'ours' if r % 2 else 'stock'} first): median stock {statistics.median(stock) * 1000:.1f} "
                f"ms/step, ours {statistics.median(ours) * 1000:.1f} ms/step",
                flush=True,
            )
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{len(ratios)} paired steps; ratio quartiles {quartiles[0]:.3f} / {quartiles[1]:.3f} / {quartiles[2]:.3f}")
    print(f"step-time ratio ours/stock: {statistics.median(ratios):.3f} (goal <= 1.03)")


if __name__ == "__main__":
    main()
