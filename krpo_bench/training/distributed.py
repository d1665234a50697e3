"""One trial on several processes (ranks started by accelerate's launcher): where this process
stands, the few collectives a trial needs, and evaluation sharded over the ranks.

A process started without a launcher (no ``WORLD_SIZE`` above 1) is rank 0 of 1 and every function
here is then a plain local computation; torch.distributed is never touched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from krpo_bench.training.evaluation import EvalResult, evaluate

WORLD_SIZE_ENV = "WORLD_SIZE"  # set for every rank by torchrun (accelerate's multi-process launcher)
TIMEOUT_S = 1800  # collectives wait this long for a slow rank (transformers' ddp_timeout default)


@dataclass(frozen=True)
class Rank:
    """This process's place in its trial: ``rank`` of ``world_size``."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Only the main process tracks, reports and writes results."""
        return self.rank == 0


def this_rank() -> Rank:
    """This process's rank; under a launcher the process group is set up on first use (through
    accelerate's ``PartialState``, which transformers' Trainer reuses: nccl on GPUs, gloo on CPU)."""
    if int(os.environ.get(WORLD_SIZE_ENV, "1")) <= 1:
        return Rank(0, 1)
    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=TIMEOUT_S))
    return Rank(dist.get_rank(), dist.get_world_size())


def _device() -> torch.device:
    """Where collective tensors live: the rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (all ranks must call it at the same point)."""
    if this_rank().world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def main_decides(flag: bool) -> bool:
    """The main process's ``flag`` on every rank (all ranks must call it at the same point)."""
    if this_rank().world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks."""
    if this_rank().world_size == 1:
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


def evaluate_sharded(model: Any, tokenizer: Any, task: Any, *, limit: int | None = None, **kwargs: Any) -> EvalResult:
    """:func:`evaluate` with the test set (its first ``limit`` prompts) split into contiguous shares,
    one per rank; hit counts are summed, so every rank gets the result over the whole set."""
    rank = this_rank()
    if rank.world_size == 1:
        return evaluate(model, tokenizer, task, limit=limit, **kwargs)
    test = task.test if limit is None else task.test.select(range(min(limit, len(task.test))))
    share = test.shard(num_shards=rank.world_size, index=rank.rank, contiguous=True)
    hits = [0.0, 0.0, 0.0]
    if len(share):
        local = evaluate(model, tokenizer, dataclasses.replace(task, test=share), **kwargs)
        n = local.num_prompts
        hits = [round(local.accuracy * n), round(local.pass_at_k * n), n]
    correct, passed, total = sum_over_ranks(hits)
    return EvalResult(accuracy=correct / total, pass_at_k=passed / total, k=kwargs["k"], num_prompts=int(total))
