"""TRL's GRPOTrainer with a pluggable advantage estimator.

The maintainer-recommended route (TRL issue #4525): override ``_generate_and_score_completions``
only, keep its output dict and replace ``advantages``. The rewards come from ``_calculate_rewards``
(already gathered across processes), aggregated exactly as TRL does. Estimators that ask for them
also get the completion lengths (``opo``) or the reward of one greedy completion per prompt
(``remax``: generated and scored here, its tokens counted in ``num_tokens``). Cross-step estimator
state (``krpo_persistent``, ``rae``, ``running_norm``, ``ebpo``) is saved in every checkpoint and
restored on resume, the way TRL keeps its adaptive-entropy state.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from collections import deque
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import GenerationConfig
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import RepeatSampler

from krpo_bench.advantages import Estimate, Estimator, Need
from krpo_bench.tasks.noise import RewardNoise, noisy_rewards

PRIVATE_MEMBERS: dict[str, str] = {
    "_generate_and_score_completions": "overridden: its output's 'advantages' replaced (TRL issue #4525)",
    "_calculate_rewards": "overridden: keeps the per-function rewards it gathers",
    "_get_train_sampler": "overridden: a sampler whose epoch shuffle a resume rebuilds",
    "_tokenize_prompts": "called: the greedy completion of remax",
    "_generate_single_turn": "called: the greedy completion of remax",
    "_metrics": "read and appended: the trainer's logged metrics",
    "_logs": "read: the logged advantages, replaced by the estimator's",
    "_get_output_dir": "called and shadowed: checkpoints are staged, then renamed",
    "_save_checkpoint": "overridden: atomic checkpoints with the estimator's state",
    "_load_from_checkpoint": "called: resuming inside train()",
    "_load_optimizer_and_scheduler": "overridden: restores the estimator's state with the optimizer's",
}
"""Every private member of trl's GRPOTrainer (trl==1.16.0, pinned in pyproject.toml for this reason)
and of transformers' Trainer this trainer overrides, calls or reads; an upgrade checks each one
(tests/training/test_trainer.py checks they all exist)."""
ESTIMATOR_STATE_FILE = "estimator_state.json"
ADVANTAGE_SAMPLE_SIZE = 20_000  # the most recent scored advantages kept for the report's histogram
CHECKPOINT_STAGING_PREFIX = ".checkpoint-staging-"  # + pid of the writer


def _remove_stale_staging(run_dir: str) -> None:
    """Remove this process's staging folder and those of writers that are gone (interrupted
    saves); another live writer's (a stopping zombie attempt) is left alone."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return
    for name in names:
        if not name.startswith(CHECKPOINT_STAGING_PREFIX):
            continue
        pid = name[len(CHECKPOINT_STAGING_PREFIX) :]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def _describe_write_error(err: BaseException, folder: str) -> str:
    """The OS error behind a failed checkpoint write. torch and safetensors wrap it (torch as an
    opaque "file write failed"), so the free space and the file size limit are added when the
    chain holds no OSError."""
    current: BaseException | None = err
    while current is not None:
        if isinstance(current, OSError):
            return f"{type(current).__name__}: {current}"
        current = current.__cause__ or current.__context__
    hints = []
    try:
        hints.append(f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on its device")
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        hints.append(f"file size limit (RLIMIT_FSIZE) {soft / 2**20:.1f} MiB")
    return f"{type(err).__name__}: {err}" + (f" ({'; '.join(hints)})" if hints else "")


class ResumableRepeatSampler(RepeatSampler):
    """TRL's prompt sampler with ``set_epoch`` (the trainer calls it at every epoch's start): its
    generator is put where an uninterrupted run has it then (seeded, one permutation drawn per
    earlier epoch), so a trial resumed in a later epoch sees the prompts in the same order. TRL's
    own sampler restarts from its seed, giving a resumed epoch the first epoch's order."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(epoch):
                torch.randperm(self.num_samples, generator=self.generator)


class BaselineGRPOTrainer(GRPOTrainer):
    """GRPO whose advantages come from ``estimator`` (any registered baseline); ``reward_noise``
    perturbs the rewards the estimator sees (training only), seeded by the trial seed and step."""

    def __init__(
        self, *args: Any, estimator: Estimator, reward_noise: RewardNoise | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.estimator = estimator
        self.reward_noise = reward_noise
        self.advantage_sample: deque[float] = deque(maxlen=ADVANTAGE_SAMPLE_SIZE)
        self._last_rewards_per_func: torch.Tensor | None = None

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's train sampler, as a :class:`ResumableRepeatSampler` (the same order, resumable)."""
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:
            return sampler
        return ResumableRepeatSampler(
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        rewards = self._add_reward_noise(self._aggregate_rewards(self._last_rewards_per_func))
        groups = rewards.view(-1, self.num_generations)
        prompt_ids = gather_object([x.get("prompt_id") for x in inputs])[:: self.num_generations]
        extra = {}
        if Need.LENGTHS in self.estimator.needs:
            extra["lengths"] = self.accelerator.gather(output["completion_mask"].sum(dim=1)).view_as(groups)
        if Need.BASELINE_REWARDS in self.estimator.needs:
            extra["baseline_rewards"] = self._greedy_rewards(inputs)
        estimate = self.estimator.estimate(groups, prompt_ids, **extra, step=self.state.global_step)
        flat = estimate.advantages.reshape(-1)
        local = len(inputs)
        rank = self.accelerator.process_index
        output["advantages"] = flat[rank * local : (rank + 1) * local].to(output["advantages"].dtype)
        self._replace_logged_advantages(flat)
        self._log_diagnostics(groups, estimate)
        return output

    def _aggregate_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Weighted sum over reward functions; NaN where every function returned None (as TRL)."""
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        return rewards

    def _add_reward_noise(self, rewards: torch.Tensor) -> torch.Tensor:
        """The rewards with ``reward_noise`` applied (all processes draw the same noise: the rewards are
        gathered); TRL's ``train/reward`` stays the clean mean, ``train/reward_noisy`` is logged next to it."""
        if self.reward_noise is None or not self.reward_noise.active:
            return rewards
        noisy = noisy_rewards(rewards.cpu().numpy(), self.reward_noise, self.args.seed, self.state.global_step)
        noisy = torch.as_tensor(noisy, dtype=rewards.dtype, device=rewards.device)
        self._metrics["train"]["train/reward_noisy"].append(noisy.nanmean().item())
        return noisy

    def _greedy_rewards(self, inputs: list[dict[str, Any]]) -> torch.Tensor:
        """The reward of one greedy completion of each prompt of the batch, ``(num_prompts,)`` across
        processes, scored like the sampled ones (without ``reward_noise``: its draws are keyed to the
        sampled rollouts). Its prompt and completion tokens count in ``num_tokens``."""
        group = self.num_generations
        if len(inputs) % group:
            raise ValueError(
                f"{self.estimator.name} needs whole groups on every process: {len(inputs)} rollouts per process "
                f"is not a multiple of group_size {group} (make prompts_per_step divisible by the process count)"
            )
        firsts = inputs[::group]
        prompts = [x["prompt"] for x in firsts]
        prompt_ids, images, multimodal = self._tokenize_prompts(prompts)
        sampling = self.generation_config
        unsampled = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
        greedy = {**self.generation_kwargs, **unsampled}
        self.generation_config = GenerationConfig(**greedy, disable_compile=True)
        try:
            completion_ids, _ = self._generate_single_turn(prompt_ids, images, multimodal, 1)
        finally:
            self.generation_config = sampling
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if is_conversational({"prompt": prompts[0]}):
            completions = [[{"role": "assistant", "content": text}] for text in texts]
        else:
            completions = texts
        per_func = GRPOTrainer._calculate_rewards(self, firsts, prompts, completions, completion_ids)
        greedy_rewards = self._aggregate_rewards(per_func)
        device = self.accelerator.device
        tokens = sum(len(ids) for ids in prompt_ids) + sum(len(ids) for ids in completion_ids)
        self.state.num_input_tokens_seen += self.accelerator.gather(torch.tensor([tokens], device=device)).sum().item()
        metrics = self._metrics["train"]
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
        metrics["adv/greedy_reward"].append(greedy_rewards.nanmean().item())
        return greedy_rewards

    def _replace_logged_advantages(self, flat: torch.Tensor) -> None:
        logged = self._logs["advantages"]
        for _ in range(min(len(flat), len(logged))):
            logged.pop()
        logged.extend(flat.tolist())

    def _log_diagnostics(self, groups: torch.Tensor, estimate: Estimate) -> None:
        metrics = self._metrics["train"]
        valid = ~groups.isnan()
        adv = estimate.advantages[valid]
        self.advantage_sample.extend(adv.tolist())
        metrics["adv/mean"].append(adv.mean().item() if adv.numel() else 0.0)
        metrics["adv/std"].append(adv.std().item() if adv.numel() > 1 else 0.0)
        metrics["adv/abs_max"].append(adv.abs().max().item() if adv.numel() else 0.0)
        metrics["adv/baseline_mean"].append(estimate.baseline[valid].mean().item() if adv.numel() else 0.0)
        metrics["adv/scale_mean"].append(estimate.scale[valid].mean().item() if adv.numel() else 0.0)
        filled = torch.where(valid, groups, groups.nanmean(dim=1, keepdim=True))
        zero_std = (filled.amax(dim=1) - filled.amin(dim=1)).abs() < 1e-12
        metrics["adv/frac_zero_std"].append(zero_std.float().mean().item())
        metrics["adv/frac_unscorable"].append((~valid).float().mean().item())
        for key, value in estimate.extras.items():
            metrics[f"adv/{key}"].append(value)

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint plus the estimator state, written atomically: everything goes to a
        staging folder that is renamed to ``checkpoint-<step>`` once complete, so a crash or a
        full disk mid-save never leaves a torn checkpoint for a resumed attempt to pick up.
        (Multi-process runs, whose ranks write into one folder, write in place as TRL does.)
        Any failure to write raises a RuntimeError naming the checkpoint folder and the OS error."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        folder = os.path.join(run_dir, name)
        atomic = self.args.world_size == 1
        staging = os.path.join(run_dir, f"{CHECKPOINT_STAGING_PREFIX}{os.getpid()}") if atomic else run_dir
        try:
            if atomic:
                _remove_stale_staging(run_dir)
                self._get_output_dir = lambda trial=None: staging  # where super() and TRL write
                try:
                    super()._save_checkpoint(model, trial)
                finally:
                    del self._get_output_dir
            else:
                super()._save_checkpoint(model, trial)
            written = os.path.join(staging, name)
            state = self.estimator.state_dict()
            if state and self.args.should_save:
                with open(os.path.join(written, ESTIMATOR_STATE_FILE), "w") as f:
                    json.dump(state, f)
            if atomic and self.args.should_save:
                if os.path.isdir(folder):  # the same step saved again (e.g. a stop right after a save)
                    shutil.rmtree(folder)
                os.rename(written, folder)
                shutil.rmtree(staging, ignore_errors=True)
                rotate_checkpoints(
                    output_dir=run_dir,
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=True,
                )
        except Exception as err:
            if atomic:
                shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"could not write checkpoint {folder}: {_describe_write_error(err, run_dir)}") from err

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any) -> TrainOutput:
        """As TRL's, except that a checkpoint already at ``max_steps`` (its attempt was killed after
        the last save, before recording the result) is loaded without training: transformers would
        run one step past ``max_steps`` before checking the limit."""
        if isinstance(resume_from_checkpoint, str) and self.args.max_steps > 0:
            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME))
            if state.global_step >= self.args.max_steps:
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                return TrainOutput(state.global_step, 0.0, {})
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, ESTIMATOR_STATE_FILE) if checkpoint else None
        if path and os.path.exists(path):
            with open(path) as f:
                self.estimator.load_state_dict(json.load(f))
