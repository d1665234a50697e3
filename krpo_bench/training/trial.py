"""One trial end to end: build task + model + estimator, train with TRL, evaluate, track in MLflow.

A trial lives in a run folder (``<data home>/trials/<trial id>`` by default) holding its
checkpoints, its MLflow run id and, once finished, ``result.json``. Running it again resumes from
the newest checkpoint and continues the same MLflow run; a finished trial returns its result.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig

from krpo_bench import stats
from krpo_bench import tags as krpo_tags
from krpo_bench.models import load_model
from krpo_bench.settings import trial_folder
from krpo_bench.spec.estimator import build_estimator
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.tracking import NullTracker, RunTracker, flatten, log_final_metrics, log_item_outcomes
from krpo_bench.training.callbacks import EvalCallback, MetricsCallback, ProgressCallback, StopCallback
from krpo_bench.training.distributed import evaluate_sharded, this_rank
from krpo_bench.training.evaluation import EvalResult, outcome_string
from krpo_bench.training.trainer import BaselineGRPOTrainer

RESULT_FILE = "result.json"
RUN_ID_FILE = "mlflow_run_id"


@dataclass(frozen=True)
class TrialResult:
    """What a trial reports (``result.json``, the job's result).

    ``final_item_outcomes`` is the final evaluation's greedy correctness of each test item, in
    test-set order, as one "0"/"1" character per item (``[int(c) for c in s]`` reads it back): a
    test set may hold up to 100,000 items, and a string is the compact JSON form of that many.
    ``final_item_ids_hash`` identifies those items (prompts and answers, in order): two results
    with equal hashes were scored on the same items. ``initial_item_outcomes`` is the same for the
    evaluation before training (the first ``eval_size`` items of the test set), when this attempt
    ran it. All three are None where there is no such evaluation (and in results written before
    they existed).
    """

    trial_id: str
    status: str  # succeeded | pruned | stopped
    steps: int
    resumed_from: int | None
    final_accuracy: float | None
    final_pass_at_k: float | None
    initial_accuracy: float | None
    wall_time_s: float
    mean_step_time_s: float | None
    tokens: float
    mlflow_run_id: str
    run_dir: str
    train_reward_auc: float | None = None
    """The mean training reward over the trial's steps (the area under its reward curve per step)."""
    final_item_outcomes: str | None = None
    final_item_ids_hash: str | None = None
    initial_item_outcomes: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def reward_curve_auc(log_history: list[dict[str, Any]]) -> float:
    """The area under the training-reward curve per step (`stats.curve_auc`) from the trainer's log
    history, which a resumed trial restores from its checkpoint (so the curve is whole)."""
    points = [(entry["step"], entry["reward"]) for entry in log_history if "reward" in entry and "step" in entry]
    return stats.curve_auc([s for s, _ in points], [r for _, r in points])


def grpo_config(
    spec: TrialSpec, output_dir: Path, use_cuda: bool, bf16: bool, reward_weights: list[float]
) -> GRPOConfig:
    """TRL configuration of a trial (one generation batch per optimizer step)."""
    t = spec.training
    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.micro_batch_size(this_rank().world_size),
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_generations=t.group_size,
        reward_weights=reward_weights,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        beta=t.beta,
        epsilon=t.epsilon,
        loss_type=t.loss_type,
        num_iterations=t.num_iterations,
        max_completion_length=t.max_completion_length,
        max_steps=t.max_steps,
        temperature=t.temperature,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=t.checkpoint_every,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not use_cuda,
        bf16=bf16,
        log_level="warning",
        dataloader_num_workers=0,
        gradient_checkpointing=t.gradient_checkpointing,
    )


def newest_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest ``checkpoint-<step>`` folder whose trainer state was written (the trainer writes
    it last), or None. A multi-process trial writes checkpoints in place, so a rank killed mid-save
    can leave a newest folder without it: the attempt that resumes falls back to the one before."""
    steps = [
        int(folder.name.rsplit("-", 1)[1])
        for folder in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if folder.name.rsplit("-", 1)[1].isdigit() and (folder / TRAINER_STATE_NAME).is_file()
    ]
    return str(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}") if steps else None


def run_trial(
    spec: TrialSpec,
    *,
    run_dir: Path | None = None,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
    on_run_created: Callable[[str], None] | None = None,
    mlflow_run_id: str | None = None,
    progress: bool = False,
) -> TrialResult:
    """Train, evaluate and track one trial, resuming from its newest checkpoint if there is one.

    ``should_stop`` is polled after every step (cancellation, SIGTERM): the trial checkpoints and
    returns with status ``stopped``. ``on_eval(step, accuracy)`` sees every periodic evaluation and
    returns True to prune the trial. ``mlflow_run_id`` continues that run (else the one recorded in
    the run folder, else a new one).
    """
    trial_id = spec.resolved_id()
    run_dir = Path(run_dir or trial_folder(trial_id))
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RESULT_FILE).exists():
        return TrialResult(**json.loads((run_dir / RESULT_FILE).read_text()))
    logging.getLogger("transformers").setLevel(logging.ERROR)
    started = time.perf_counter()

    main = this_rank().is_main  # the other ranks of a multi-process trial train and evaluate, never write
    tracker = RunTracker(tracking_uri) if main else NullTracker()
    run_id_path = run_dir / RUN_ID_FILE
    previous_run = mlflow_run_id or (run_id_path.read_text().strip() if run_id_path.exists() else None)
    run_tags = {krpo_tags.TRIAL_ID: trial_id, krpo_tags.ESTIMATOR: spec.estimator.name, **(tags or {})}
    run_id = tracker.start(spec.experiment, spec.name, run_id=previous_run, parent_run_id=parent_run_id, tags=run_tags)
    if main:
        run_id_path.write_text(run_id)
        if on_run_created is not None:
            on_run_created(run_id)
    try:
        result = _train(spec, trial_id, run_dir, tracker, should_stop, on_eval, progress, started)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED" if result.status in ("succeeded", "pruned") else "KILLED")
    if result.status != "stopped" and main:
        (run_dir / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2))
    return result


def _train(
    spec: TrialSpec,
    trial_id: str,
    run_dir: Path,
    tracker: RunTracker,
    should_stop: Callable[[], bool] | None,
    on_eval: Callable[[int, float], bool] | None,
    progress: bool,
    started: float,
) -> TrialResult:
    t = spec.training
    set_seed(t.seed)
    use_cuda = torch.cuda.is_available()
    task = build_task(spec.task)
    loaded = load_model(spec.model, device="cuda" if use_cuda else "cpu", trial_seed=t.seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    bf16 = use_cuda and next(model.parameters()).dtype == torch.bfloat16
    checkpoint = newest_complete_checkpoint(run_dir)

    params = flatten(spec.model_dump(mode="json"))
    if loaded.warm_start_seed is not None:
        params[krpo_tags.WARM_START_SEED_PARAM] = str(loaded.warm_start_seed)
    tracker.log_params(params)
    if checkpoint is None:
        tracker.log_dict(spec.model_dump(mode="json"), "config/trial.json")

    def run_eval(step: int, limit: int | None = t.eval_size) -> EvalResult:
        result = evaluate_sharded(
            model,
            tokenizer,
            task,
            max_new_tokens=t.max_completion_length,
            k=t.pass_at_k,
            temperature=t.temperature,
            limit=limit,
            batch_size=t.eval_batch_size,
            seed=t.seed + step,
        )
        tracker.log_metrics({"eval/accuracy": result.accuracy, "eval/pass_at_k": result.pass_at_k}, step=step)
        return result

    initial = run_eval(0) if checkpoint is None else None
    trainer = BaselineGRPOTrainer(
        model=model,
        reward_funcs=task.reward_funcs,
        args=grpo_config(spec, run_dir, use_cuda, bf16, list(task.reward_weights)),
        train_dataset=task.train,
        processing_class=tokenizer,
        estimator=build_estimator(spec.estimator, seed=t.seed),
        reward_noise=spec.task.reward_noise,
    )
    trainer.remove_callback(PrinterCallback)
    metrics_cb = MetricsCallback(tracker)
    eval_cb = EvalCallback(t.eval_every, lambda step: run_eval(step).accuracy, on_eval)
    stop_cb = StopCallback(should_stop or (lambda: False))
    for callback in (metrics_cb, eval_cb, stop_cb):
        trainer.add_callback(callback)
    if progress:
        trainer.add_callback(ProgressCallback(spec.name))
    trainer.train(resume_from_checkpoint=checkpoint)
    steps = trainer.state.global_step
    if trainer.advantage_sample:
        tracker.log_dict({"values": list(trainer.advantage_sample)}, krpo_tags.ADVANTAGES_ARTIFACT)

    if stop_cb.stopped and not eval_cb.pruned:
        status = "stopped"
        final = None
    else:
        status = "pruned" if eval_cb.pruned else "succeeded"
        final = run_eval(steps, limit=None)
        evaluations = {"final": final, "initial": initial}
        log_item_outcomes(tracker, {name: r.item_record() for name, r in evaluations.items() if r is not None})
    wall = time.perf_counter() - started
    step_times = metrics_cb.step_times
    mean_step = sum(step_times) / len(step_times) if step_times else None
    gpus = torch.cuda.device_count() if use_cuda else 0
    summary = {"cost/wall_time_s": wall, "cost/gpu_seconds": wall * gpus, "cost/tokens": metrics_cb.last_tokens}
    if mean_step is not None:
        summary["cost/mean_step_time_s"] = mean_step
    if final is not None:  # a pruned trial's accuracy is at the step it stopped: not a final one beside the others
        prefix = "pruned" if status == "pruned" else "final"
        summary.update({f"{prefix}/accuracy": final.accuracy, f"{prefix}/pass_at_k": final.pass_at_k})
    if initial is not None:
        summary["final/initial_accuracy"] = initial.accuracy
    reward_auc = reward_curve_auc(trainer.state.log_history)
    if final is not None and math.isfinite(reward_auc):
        summary["final/train_reward_auc"] = reward_auc
    log_final_metrics(tracker, summary)
    return TrialResult(
        trial_id=trial_id,
        status=status,
        steps=steps,
        resumed_from=int(Path(checkpoint).name.split("-")[-1]) if checkpoint else None,
        final_accuracy=final.accuracy if final else None,
        final_pass_at_k=final.pass_at_k if final else None,
        initial_accuracy=initial.accuracy if initial else None,
        wall_time_s=wall,
        mean_step_time_s=mean_step,
        tokens=metrics_cb.last_tokens,
        mlflow_run_id=tracker.run_id,
        run_dir=str(run_dir),
        train_reward_auc=summary.get("final/train_reward_auc"),
        final_item_outcomes=outcome_string(final.item_outcomes) if final else None,
        final_item_ids_hash=final.item_ids_hash if final else None,
        initial_item_outcomes=outcome_string(initial.item_outcomes) if initial else None,
    )
