"""Run a probe end to end: load the weights, draw the reference and the M shared batches, compute
every estimator's one-batch gradients, summarise, track in MLflow and write the report."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import set_seed

from krpo_bench import tags as krpo_tags
from krpo_bench.advantages import Need, get_estimator
from krpo_bench.data_roots import data_folder
from krpo_bench.models import load_model
from krpo_bench.models.hf import load_pretrained, resolve_dtype
from krpo_bench.probe.checkpoint import CheckpointSource
from krpo_bench.probe.gradients import (
    length_weights,
    loss_gradients,
    rollout_weights,
    sequence_logprobs,
)
from krpo_bench.probe.result import ProbeResult
from krpo_bench.probe.rollouts import draw_rollouts
from krpo_bench.probe.spec import MAX_REFERENCE_BLOCKS, CheckpointRef, ProbeSpec
from krpo_bench.probe.stats import GradientTally, ReferenceGradient, cosine, paired_difference, with_holm
from krpo_bench.settings import data_home, trial_folder
from krpo_bench.spec.estimator import build_estimator
from krpo_bench.tasks import build_task
from krpo_bench.tasks.noise import noisy_rewards
from krpo_bench.tracking import NullTracker, RunTracker, flatten

LENGTH_NOTE = {
    "grpo": "each rollout's log-probability gradient is divided by its own length |o_i| and by the batch size B "
    "(TRL's per-sequence token mean, then mean over sequences)",
    "dr_grpo": "each rollout's log-probability gradient is divided by B x max_completion_length (a constant)",
    "dapo": "each rollout's log-probability gradient is divided by the batch's total completion tokens",
    "bnpo": "each rollout's log-probability gradient is divided by the batch's total completion tokens "
    "(TRL's bnpo with one micro-batch per step)",
}


def _resolved(spec: ProbeSpec, source: CheckpointSource | None) -> CheckpointSource | None:
    """``source`` where the spec names its checkpoint by trial (it must then be given), else None."""
    if not isinstance(spec.checkpoint, CheckpointRef):
        return None
    if source is None:
        raise ValueError(
            f"checkpoint: {spec.checkpoint.describe()} names a trial, which `krpo-bench probe FILE` resolves through "
            "the job database; a probe run elsewhere names its checkpoint folder by path"
        )
    return source


def probe_id(spec: ProbeSpec, source: CheckpointSource | None = None) -> str:
    """A stable id of everything that changes the probe's numbers; a checkpoint named by trial counts
    as its resolved ``source``'s trial id and step, so every data home gives the same id."""
    data = spec.model_dump(mode="json", exclude={"name", "description", "experiment"})
    resolved = _resolved(spec, source)
    if resolved is not None:
        data["checkpoint"] = resolved.identity()
    payload = json.dumps(data, sort_keys=True)
    return f"probe-{hashlib.sha1(payload.encode()).hexdigest()[:12]}"


def _load(spec: ProbeSpec, device: str, source: CheckpointSource | None = None) -> tuple[Any, Any]:
    """The model and tokenizer at the spec's weights: the warm start, a checkpoint folder read under
    the data roots, or a trial's checkpoint (``source``) read under this data home's trial folders."""
    if spec.checkpoint is None:
        loaded = load_model(spec.model, device=device)
        return loaded.model, loaded.tokenizer
    if spec.model.lora is not None:
        raise ValueError("checkpoint: probing a LoRA trial's checkpoint (adapter weights only) is not supported")
    resolved = _resolved(spec, source)
    if resolved is None:
        path, roots, shown = spec.checkpoint, None, spec.checkpoint
    else:
        path, roots = str(resolved.folder), (trial_folder(resolved.trial_id),)
        shown = f"trial {resolved.trial_id} {resolved.folder.name}"
    try:
        with data_folder(path, "checkpoint", roots) as folder:
            if not (folder / "config.json").is_file():
                raise ValueError(f"checkpoint: {shown[:200]!r} is not a checkpoint folder (no config.json)")
            model, tokenizer = load_pretrained(
                folder,
                name=spec.model.name,
                dtype=resolve_dtype(spec.model.dtype, device),
                device=device,
                shown=shown,
            )
    except (FileNotFoundError, NotADirectoryError):
        raise ValueError(f"checkpoint: {shown[:200]!r} is not a checkpoint folder (no such folder)") from None
    model.config.name_or_path = tokenizer.name_or_path = shown  # not the descriptor path it was read through
    return model, tokenizer


def _reference(
    spec: ProbeSpec, model: Any, tokenizer: Any, task: Any, prompts: np.ndarray
) -> tuple[ReferenceGradient, float, float]:
    """The rloo (no std) gradient of the loss over all reference rollouts with its leave-one-block-out
    versions (the k-th reference prompt's rollouts in block k mod K, K = min(prompts,
    MAX_REFERENCE_BLOCKS); one batched backward pass per chunk gives its blocks' gradients), the
    cosine between the gradients of its two halves (even and odd chunks), and the mean reference reward."""
    ref = spec.reference
    rloo = get_estimator("rloo")
    starts = range(0, len(prompts), ref.chunk_prompts)
    if len(starts) < 2:
        raise ValueError("reference: needs at least two chunks (prompts > chunk_prompts) to check its own noise")
    blocks = min(len(prompts), MAX_REFERENCE_BLOCKS)
    sums: torch.Tensor | None = None
    halves: torch.Tensor | None = None
    normalisers = [0.0] * blocks
    rewards = []
    for number, start in enumerate(starts):
        chosen = prompts[start : start + ref.chunk_prompts]
        batch = draw_rollouts(
            model,
            tokenizer,
            task,
            chosen.tolist(),
            ref.group_size,
            temperature=spec.temperature,
            max_completion_length=spec.max_completion_length,
        )
        advantages = rloo(batch.rewards.view(-1, ref.group_size)).reshape(-1)
        # Unnormalised weights: the whole reference set is normalised once all chunks are summed.
        weights, _ = length_weights(batch.completion_mask, spec.loss_type, spec.max_completion_length)
        logprobs = sequence_logprobs(model, batch, torch.arange(len(batch.rewards)), spec.temperature)
        row_blocks = ((start + torch.arange(len(chosen))) % blocks).repeat_interleave(ref.group_size)
        present = row_blocks.unique().tolist()
        coefficients = -(advantages.to(torch.float64) * weights)
        rows = torch.stack([torch.where(row_blocks == k, coefficients, 0.0) for k in present])
        for k, gradient in zip(present, loss_gradients(model, logprobs, rows)):
            if sums is None:
                sums = torch.zeros(blocks, gradient.numel(), dtype=torch.float64, device=gradient.device)
                halves = torch.zeros(2, gradient.numel(), dtype=torch.float64, device=gradient.device)
            sums[k] += gradient.double()
            halves[number % 2] += gradient.double()
            normalisers[k] += length_weights(
                batch.completion_mask[row_blocks == k], spec.loss_type, spec.max_completion_length
            )[1]
        del logprobs
        rewards.append(batch.rewards)
    split = cosine(halves[0], halves[1])
    reference = ReferenceGradient.from_blocks(sums, normalisers)
    return reference, split, torch.cat(rewards).nanmean().item()


class Measurement(NamedTuple):
    """What a probe measures: its table rows and what they say about the reference."""

    rows: list[dict[str, Any]]
    reference_split_cosine: float
    reference_reward_mean: float
    reference_blocks: int


def measure(spec: ProbeSpec, model: Any, tokenizer: Any, on_batch: Callable[[int], None] | None = None) -> Measurement:
    """The probe's table rows (Δcos p-values Holm-adjusted over the table), the reference's
    split-half cosine, its mean reward and the number of its blocks."""
    estimators = {(e.name, g): build_estimator(e, seed=spec.seed) for e in spec.estimators for g in spec.group_sizes}
    task = build_task(spec.task)
    model.train()
    rng = np.random.default_rng(spec.seed)
    size = len(task.train)
    reference_prompts = rng.choice(size, size=min(spec.reference.prompts, size), replace=False)
    reference, split, reward_mean = _reference(spec, model, tokenizer, task, reference_prompts)
    g_max = max(spec.group_sizes)
    tallies = {key: GradientTally(reference) for key in estimators}
    noise = spec.task.reward_noise
    for b in range(spec.batches):
        indices = rng.choice(size, size=min(spec.prompts_per_batch, size), replace=False).tolist()
        batch = draw_rollouts(
            model,
            tokenizer,
            task,
            indices,
            g_max,
            temperature=spec.temperature,
            max_completion_length=spec.max_completion_length,
        )
        rewards = batch.rewards
        if noise is not None and noise.active:
            rewards = torch.as_tensor(noisy_rewards(rewards.numpy(), noise, spec.seed, b), dtype=rewards.dtype)
        logprobs = sequence_logprobs(model, batch, torch.arange(len(rewards)), spec.temperature)
        keys, coefficients, kept = [], [], []
        for g in spec.group_sizes:
            rows = batch.rows(g)
            groups = rewards[rows].view(-1, g)
            lengths = batch.completion_mask[rows].sum(dim=1).view(-1, g)
            weights = rollout_weights(batch.completion_mask[rows], spec.loss_type, spec.max_completion_length)
            for e in spec.estimators:
                estimator = estimators[(e.name, g)]
                extra = {"lengths": lengths} if Need.LENGTHS in estimator.needs else {}
                advantages = estimator.estimate(groups, batch.prompt_keys, **extra, step=b).advantages.reshape(-1)
                row = torch.zeros(len(rewards), dtype=torch.float64)
                row[rows] = -advantages.to(torch.float64) * weights
                keys.append((e.name, g))
                coefficients.append(row)
                kept.append(advantages[~groups.reshape(-1).isnan()])
        gradients = loss_gradients(model, logprobs, torch.stack(coefficients))
        for key, advantages, gradient in zip(keys, kept, gradients):
            tallies[key].add(gradient, advantages)
        del logprobs
        if on_batch is not None:
            on_batch(b + 1)
    rows = with_holm([_row(tallies, name, g, comparison_estimator(spec)) for name, g in tallies])
    return Measurement(rows, split, reward_mean, reference.blocks)


def comparison_estimator(spec: ProbeSpec) -> str:
    """The estimator every other one is compared with, batch by batch: grpo, or the first listed."""
    names = [e.name for e in spec.estimators]
    return "grpo" if "grpo" in names else names[0]


def _row(tallies: dict[tuple[str, int], GradientTally], name: str, g: int, versus: str) -> dict[str, Any]:
    """One table row; the one-batch cosine's difference from ``versus`` is paired over the shared
    batches (a row compared with itself has no test: its p-value is NaN)."""
    difference = paired_difference(tallies[(name, g)], tallies[(versus, g)])
    if name == versus:
        difference["cos_diff_p"] = math.nan
    return {"estimator": name, "group_size": g, **tallies[(name, g)].summary(), "versus": versus, **difference}


def run_probe(
    spec: ProbeSpec,
    *,
    tracking_uri: str | None = None,
    out: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    track: bool = True,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    mlflow_run_id: str | None = None,
    on_run_created: Callable[[str], None] | None = None,
    source: CheckpointSource | None = None,
) -> ProbeResult:
    """Measure the probe, log it to MLflow (one run, tagged like a trial's) and write its report.

    As a study's job: the run is a child of ``parent_run_id`` with the job's ``tags`` added;
    ``mlflow_run_id`` continues an earlier attempt's run (the probe is re-run from scratch: given
    its seed it logs the same numbers); ``on_run_created`` is told the run id once it exists.
    ``source``: the checkpoint a spec naming its checkpoint by trial resolved to
    (:func:`~krpo_bench.probe.checkpoint.checkpoint_source`)."""
    from krpo_bench.probe.report import write_report

    started = time.perf_counter()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    set_seed(spec.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    identifier = probe_id(spec, source)
    resolved = _resolved(spec, source)
    tracker = RunTracker(tracking_uri) if track else NullTracker()
    run_id = tracker.start(
        spec.experiment,
        spec.name,
        run_id=mlflow_run_id,
        parent_run_id=parent_run_id,
        tags={**(tags or {}), krpo_tags.KIND: "probe", krpo_tags.PROBE_ID: identifier, krpo_tags.TRIAL_ID: identifier},
    )
    if on_run_created is not None and tracker.run_id:
        on_run_created(tracker.run_id)
    try:
        params = flatten(spec.model_dump(mode="json"))
        if resolved is not None:
            params |= flatten({"checkpoint": resolved.identity()})
        tracker.log_params(params)
        tracker.log_dict(spec.model_dump(mode="json"), "config/probe.json")
        model, tokenizer = _load(spec, device, resolved)
        rows, split, reward_mean, blocks = measure(spec, model, tokenizer, on_batch)
        for row in rows:
            metrics = {
                f"probe/{row['estimator']}/{key}": value
                for key, value in row.items()
                if key not in ("estimator", "group_size", "versus") and value == value
            }
            tracker.log_metrics(metrics, step=row["group_size"])
        wall = time.perf_counter() - started
        tracker.log_metrics({"probe/reference_split_cosine": split, "cost/wall_time_s": wall}, step=0)
        result = ProbeResult(
            probe_id=identifier,
            rows=rows,
            reference_split_cosine=split,
            reference_reward_mean=reward_mean,
            wall_time_s=wall,
            mlflow_run_id=tracker.run_id or run_id,
            report_dir=str(out or data_home() / "reports" / identifier),
            length_normalisation=LENGTH_NOTE[spec.loss_type],
            reference_blocks=blocks,
            checkpoint_source=resolved.identity() if resolved is not None else None,
        )
        write_report(spec, result, Path(result.report_dir))
        tracker.log_dict(result.to_json(), "probe/result.json")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return result
