"""Rollouts for the probe, tokenised, generated, masked and scored the way TRL's GRPOTrainer does
(transformers generation path): prompts left-padded, completions cut after the first EOS and
right-padded, rewards from the task's reward functions combined with their weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from krpo_bench.tasks import Task, combine_rewards


@dataclass
class RolloutBatch:
    """``prompts x group`` rollouts in prompt-major order (a prompt's group is consecutive rows)."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor  # (B, C) right-padded, nothing after the first EOS
    completion_mask: torch.Tensor
    rewards: torch.Tensor  # (B,) weighted sum of the task's rewards (NaN: unscorable)
    prompt_keys: list[Any]  # one per prompt (the dataset's prompt_id)
    group_size: int

    def rows(self, group_size: int) -> torch.Tensor:
        """Row indices of the first ``group_size`` rollouts of every group."""
        prompts = len(self.prompt_keys)
        base = torch.arange(prompts).unsqueeze(1) * self.group_size
        return (base + torch.arange(group_size).unsqueeze(0)).reshape(-1)


def _pad(rows: Sequence[list[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def tokenize_prompts(tokenizer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """Token ids of each prompt as TRL makes them: the chat template with the generation prompt for
    conversational prompts, the tokenizer's default encoding for plain text."""
    if prompts and not isinstance(prompts[0], str):
        encoded = tokenizer.apply_chat_template(
            conversation=list(prompts), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [list(ids) for ids in encoded["input_ids"]]
    return [list(ids) for ids in tokenizer(text=list(prompts))["input_ids"]]


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({tokenizer.eos_token_id, *ids} - {None})


@torch.no_grad()
def draw_rollouts(
    model: Any,
    tokenizer: Any,
    task: Task,
    indices: Sequence[int],
    group_size: int,
    *,
    temperature: float,
    max_completion_length: int,
) -> RolloutBatch:
    """``group_size`` sampled completions for each training prompt ``indices`` (TRL's generation
    settings: top_p 1, top_k 0, no repetition penalty), scored with the task's rewards."""
    rows = task.train.select(list(indices))
    device = next(model.parameters()).device
    prompt_tokens = [ids for ids in tokenize_prompts(tokenizer, rows["prompt"]) for _ in range(group_size)]
    prompt_ids, prompt_mask = _pad(prompt_tokens, tokenizer.pad_token_id, "left")
    eos = _eos_ids(tokenizer, model)
    config = GenerationConfig(
        max_new_tokens=max_completion_length,
        do_sample=True,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
    )
    generated = model.generate(
        input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device), generation_config=config
    )[:, prompt_ids.shape[1] :].cpu()
    completions = []
    for row in generated.tolist():
        cut = next((i for i, token in enumerate(row) if token in eos), len(row) - 1)
        completions.append(row[: cut + 1])
    completion_ids, completion_mask = _pad(completions, tokenizer.pad_token_id, "right")
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    conversational = not isinstance(rows["prompt"][0], str)
    scored = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    answers = [a for a in rows["answer"] for _ in range(group_size)]
    prompts = [p for p in rows["prompt"] for _ in range(group_size)]
    per_func = [f(prompts=prompts, completions=scored, answer=answers) for f in task.reward_funcs]
    rewards = torch.tensor(combine_rewards(per_func, task.reward_weights), dtype=torch.float32)
    return RolloutBatch(
        prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, list(rows["prompt_id"]), group_size
    )
