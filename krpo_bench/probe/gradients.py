"""The policy gradient of TRL's GRPO loss at the current weights, for any advantages.

At the first optimizer step on a batch the policy is the old policy, so every importance ratio is
1, the PPO clip is inactive and the k3 KL term (reference model = policy) has zero gradient: the
gradient of TRL 1.16's loss is  -sum_i A_i w_i sum_t grad log pi(o_it)  with log-probabilities of the
temperature-scaled logits and a per-rollout weight w_i set by ``loss_type``:

- grpo: 1 / (B |o_i|)  (each sequence's token mean, then the mean over the B sequences)
- dr_grpo: 1 / (B L)  (L = max_completion_length)
- dapo: 1 / N  (N = completion tokens in the whole batch; exact for any number of micro-batches)
- bnpo: 1 / N as with one micro-batch per step (TRL normalises bnpo per micro-batch)

grpo and dr_grpo split over K micro-batches of equal size give the same sum (TRL divides each
micro-batch's mean by K). Gradient clipping (``max_grad_norm``) rescales the step, not its direction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from krpo_bench.probe.rollouts import RolloutBatch


def length_weights(
    completion_mask: torch.Tensor, loss_type: str, max_completion_length: int
) -> tuple[torch.Tensor, float]:
    """Per-rollout weights u_i and the batch normaliser z with w_i = u_i / z (see the module
    docstring); summing u over several batches and z likewise gives the weights of their union."""
    lengths = completion_mask.sum(dim=1).clamp(min=1).to(torch.float64)
    count = float(completion_mask.shape[0])
    if loss_type == "grpo":
        return 1.0 / lengths, count
    if loss_type == "dr_grpo":
        return torch.full_like(lengths, 1.0 / max_completion_length), count
    if loss_type in ("dapo", "bnpo"):
        return torch.ones_like(lengths), float(completion_mask.sum().clamp(min=1))
    raise ValueError(f"unknown loss_type {loss_type!r}; allowed: grpo, dr_grpo, dapo, bnpo")


def rollout_weights(completion_mask: torch.Tensor, loss_type: str, max_completion_length: int) -> torch.Tensor:
    """w_i of every rollout of one batch (see the module docstring)."""
    weights, normaliser = length_weights(completion_mask, loss_type, max_completion_length)
    return weights / normaliser


def sequence_logprobs(model: Any, batch: RolloutBatch, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum_t log pi(o_it) over the completion tokens of ``rows``, differentiable, as TRL scores them
    (the padded prompt + completion in one forward, logits divided by the temperature)."""
    device = next(model.parameters()).device
    completion_ids = batch.completion_ids[rows].to(device)
    completion_mask = batch.completion_mask[rows].to(device)
    input_ids = torch.cat([batch.prompt_ids[rows].to(device), completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask[rows].to(device), completion_mask], dim=1)
    width = completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -width - 1 : -1, :]
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    token_logps = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return (token_logps * completion_mask).sum(dim=1)


def flat_gradient(model: Any, objective: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """d objective / d (trainable parameters), flattened in ``model.parameters()`` order (float32)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])


def loss_gradient(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    model: Any,
    retain_graph: bool = True,
) -> torch.Tensor:
    """The gradient of TRL's loss -sum_i A_i w_i log pi(o_i) given the rollouts' ``logprobs``."""
    coefficients = (advantages.to(torch.float64) * weights).to(logprobs.device, logprobs.dtype)
    return flat_gradient(model, -(coefficients * logprobs).sum(), retain_graph=retain_graph)


def loss_gradients(
    model: Any, logprobs: torch.Tensor, coefficients: torch.Tensor, max_floats: int = 2**28
) -> Iterator[torch.Tensor]:
    """The gradient of ``sum_i coefficients[k, i] * logprobs[i]`` for every row k, in order: one
    vectorised backward pass (``is_grads_batched``) over the kept forward per chunk of rows, a chunk
    holding at most ``max_floats`` gradient entries. With coefficients -A_i w_i (zero for rollouts
    left out) each row is TRL's loss gradient for one advantage vector and row subset."""
    params = [p for p in model.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    chunk = max(1, max_floats // size)
    for start in range(0, coefficients.shape[0], chunk):
        block = coefficients[start : start + chunk].to(logprobs.device, logprobs.dtype)
        grads = torch.autograd.grad(
            logprobs, params, grad_outputs=block, is_grads_batched=True, retain_graph=True, allow_unused=True
        )
        flat = torch.cat(
            [
                (g if g is not None else torch.zeros(len(block), *p.shape)).reshape(len(block), -1).float()
                for g, p in zip(grads, params)
            ],
            dim=1,
        )
        yield from flat
