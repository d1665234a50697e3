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

from krpo_bench.training.evaluation import EvalResult, evaluate, item_ids_hash

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


def contiguous_share(size: int, world_size: int, rank: int) -> range:
    """The positions of ``rank``'s contiguous share of ``size`` items (datasets' ``shard(contiguous=True)``
    split: the first ``size % world_size`` ranks take one item more)."""
    div, mod = divmod(size, world_size)
    start = div * rank + min(rank, mod)
    return range(start, start + div + (1 if rank < mod else 0))


def place_share(values: Sequence[int], share: range, size: int) -> list[float]:
    """``values`` at the positions of ``share`` in a vector of ``size`` zeros (summed over ranks,
    the shares' vectors give every item's value in test-set order)."""
    placed = [0.0] * size
    placed[share.start : share.stop] = [float(v) for v in values]
    return placed


def evaluate_sharded(model: Any, tokenizer: Any, task: Any, *, limit: int | None = None, **kwargs: Any) -> EvalResult:
    """:func:`evaluate` with the test set (its first ``limit`` prompts) split into contiguous shares,
    one per rank; the per-item outcomes are gathered in test-set order, so every rank gets the
    result over the whole set."""
    rank = this_rank()
    if rank.world_size == 1:
        return evaluate(model, tokenizer, task, limit=limit, **kwargs)
    test = task.test if limit is None else task.test.select(range(min(limit, len(task.test))))
    size = len(test)
    share = contiguous_share(size, rank.world_size, rank.rank)
    outcomes, hits = [0] * len(share), [0] * len(share)
    if len(share):
        local = evaluate(model, tokenizer, dataclasses.replace(task, test=test.select(share)), **kwargs)
        outcomes, hits = local.item_outcomes, local.item_pass_at_k
    gathered = [int(v) for v in sum_over_ranks(place_share(outcomes, share, size) + place_share(hits, share, size))]
    all_outcomes, all_hits = tuple(gathered[:size]), tuple(gathered[size:])
    return EvalResult(
        accuracy=sum(all_outcomes) / size,
        pass_at_k=sum(all_hits) / size,
        k=kwargs["k"],
        num_prompts=size,
        item_outcomes=all_outcomes,
        item_pass_at_k=all_hits,
        item_ids_hash=item_ids_hash(test["prompt"], test["answer"]),
    )
