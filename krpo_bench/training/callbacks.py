"""Trainer callbacks: MLflow metrics, periodic held-out evaluation, stop requests, progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback

from krpo_bench.tracking import RunTracker

TRL_TO_METRIC = {
    "reward": "train/reward",
    "reward_std": "train/reward_std",
    "completions/mean_length": "train/completion_length",
    "loss": "train/loss",
    "kl": "train/kl",
    "entropy": "train/entropy",
    "grad_norm": "train/grad_norm",
    "learning_rate": "train/learning_rate",
    "num_tokens": "train/num_tokens",
}


def rename_trl_logs(logs: dict[str, Any]) -> dict[str, float]:
    """TRL's log keys -> krpo-bench metric names (adv/* and anything else numeric kept as is)."""
    out = {}
    for key, value in logs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[TRL_TO_METRIC.get(key, key)] = float(value)
    return out


class MetricsCallback(TrainerCallback):
    """Sends every logged step to MLflow, adding the wall time of the step."""

    def __init__(self, tracker: RunTracker) -> None:
        self.tracker = tracker
        self.last_tokens = 0.0
        self._step_started = time.perf_counter()
        self.step_times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter() - self._step_started)

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = rename_trl_logs(logs or {})
        if self.step_times and "train/reward" in metrics:
            metrics["train/step_time_s"] = self.step_times[-1]
        self.last_tokens = metrics.get("train/num_tokens", self.last_tokens)
        self.tracker.log_metrics(metrics, step=state.global_step)


class EvalCallback(TrainerCallback):
    """Evaluates every ``every`` steps; ``on_eval(step, accuracy)`` returning True prunes the trial."""

    def __init__(
        self,
        every: int,
        run_eval: Callable[[int], float],
        on_eval: Callable[[int, float], bool] | None = None,
    ) -> None:
        self.every = every
        self.run_eval = run_eval
        self.on_eval = on_eval
        self.pruned = False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.every or state.global_step % self.every or state.global_step >= state.max_steps:
            return
        accuracy = self.run_eval(state.global_step)
        if self.on_eval is not None and self.on_eval(state.global_step, accuracy):
            self.pruned = True
            control.should_training_stop = True


class StopCallback(TrainerCallback):
    """Stops (after saving a checkpoint) as soon as ``should_stop()`` says so."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True


class ProgressCallback(TrainerCallback):
    """A rich progress bar with the latest reward."""

    def __init__(self, description: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # the trial's name, shown as text
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]:.3f}"),
            TimeRemainingColumn(),
        )
        self.description = description
        self.task_id = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.start()
        self.task_id = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, reward=float("nan")
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.task_id is not None and logs and "reward" in logs:
            self.progress.update(self.task_id, reward=logs["reward"])

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task_id, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.stop()
