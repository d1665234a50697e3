"""Held-out evaluation: greedy accuracy and sampled pass@k on a task's test split, item by item."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

ITEM_IDS_HASH_CHARS = 16


@dataclass(frozen=True)
class EvalResult:
    """Scores over ``num_prompts`` test items; ``item_outcomes`` (greedy correct, 0/1) and
    ``item_pass_at_k`` (any of the k samples correct, 0/1) are per item in test-set order, so
    ``accuracy == mean(item_outcomes)`` and ``pass_at_k == mean(item_pass_at_k)`` exactly."""

    accuracy: float
    pass_at_k: float
    k: int
    num_prompts: int
    item_outcomes: tuple[int, ...]
    item_pass_at_k: tuple[int, ...]
    item_ids_hash: str

    def item_record(self) -> dict[str, Any]:
        """The per-item outcomes in compact form (one "0"/"1" character per item, test-set order)."""
        return {
            "num_items": self.num_prompts,
            "item_ids_hash": self.item_ids_hash,
            "outcomes": outcome_string(self.item_outcomes),
            "pass_at_k": outcome_string(self.item_pass_at_k),
            "k": self.k,
        }


def item_ids_hash(prompts: Sequence[Any], answers: Sequence[str]) -> str:
    """A short hash of the test items (prompt and gold answer, in order): two evaluations with the
    same hash scored the same items in the same order."""
    items = json.dumps([[p, a] for p, a in zip(prompts, answers, strict=True)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(items.encode()).hexdigest()[:ITEM_IDS_HASH_CHARS]


def outcome_string(outcomes: Iterable[int]) -> str:
    """0/1 outcomes as one "0"/"1" character per item (``[int(c) for c in s]`` reads them back)."""
    return "".join("1" if o else "0" for o in outcomes)


def render_prompts(tokenizer: Any, prompts: Sequence[str | list[dict[str, str]]]) -> list[str]:
    """Plain prompts as they are; chat prompts through the tokenizer's chat template."""
    return [
        p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


@torch.no_grad()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    num_return_sequences: int = 1,
    temperature: float | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Completions for already-rendered prompts: greedy when ``temperature`` is None, else sampled."""
    device = next(model.parameters()).device
    out: list[str] = []
    sampling = temperature is not None
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=1.0 if sampling else None,
            top_k=0 if sampling else None,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        completions = generated[:, batch["input_ids"].shape[1] :]
        out.extend(tokenizer.batch_decode(completions, skip_special_tokens=True))
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Any,
    *,
    max_new_tokens: int,
    k: int,
    temperature: float,
    limit: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> EvalResult:
    """Greedy accuracy and pass@k (k samples at ``temperature``) on ``task.test``, with each item's outcomes.

    Sampling uses its own seeded RNG stream, so evaluating never perturbs training randomness.
    """
    test = task.test if limit is None else task.test.select(range(min(limit, len(task.test))))
    prompts = render_prompts(tokenizer, test["prompt"])
    answers = test["answer"]
    was_training = model.training
    model.eval()
    try:
        greedy = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        outcomes = tuple(int(task.is_correct(c, a)) for c, a in zip(greedy, answers))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sampled = generate_completions(
                model,
                tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                num_return_sequences=k,
                temperature=temperature,
                batch_size=max(1, batch_size // k),
            )
        hits = tuple(
            int(any(task.is_correct(c, a) for c in sampled[i * k : (i + 1) * k])) for i, a in enumerate(answers)
        )
    finally:
        model.train(was_training)
    return EvalResult(
        accuracy=sum(outcomes) / len(answers),
        pass_at_k=sum(hits) / len(answers),
        k=k,
        num_prompts=len(answers),
        item_outcomes=outcomes,
        item_pass_at_k=hits,
        item_ids_hash=item_ids_hash(test["prompt"], answers),
    )
