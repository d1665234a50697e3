"""Speed of the vectorised estimators, measured side by side in one process.

Prints the cost of every registered estimator on 1024 groups x 12 and its ratio to ``grpo``
(estimators that take them get completion lengths and greedy rewards, drawn once), the speed-up of
vectorised ``krpo`` over a plain loop of the paper's definition (torch scalar ops per rollout, as in
the released script, and a pure-Python loop). Last line: the most expensive estimator's cost
relative to ``grpo`` and the speed-up over the paper's loop.
On CPU it runs on one thread by default (``--threads``): on a loaded machine torch's thread pool
stalls whenever another process holds a core, which swamps the estimators' own cost.
    python -m benchmarks.estimators [--device cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from krpo_bench.advantages import ESTIMATORS, get_estimator, reference


def paper_loop(rewards: torch.Tensor, Q: float = 1e-5, R: float = 1e-2) -> torch.Tensor:
    """KRPO exactly as the paper's script computes it: one filter per group, one rollout at a time."""
    advantages = torch.zeros_like(rewards)
    for g in range(rewards.shape[0]):
        x = torch.tensor(0.0, device=rewards.device)
        P = torch.tensor(1.0, device=rewards.device)
        for i in range(rewards.shape[1]):
            z = rewards[g, i]
            P_pred = P + Q
            K = P_pred / (P_pred + R)
            x = x + K * (z - x)
            P = (1 - K) * P_pred
            advantages[g, i] = (z - x) / (torch.sqrt(P) + 1e-8)
    return advantages


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def timed_side_by_side(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns call by call so that a
    change in the machine's load hits all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 3):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            if i >= 3:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rewards = torch.randint(0, 2, (args.groups, args.group_size), device=device).float()
    ids = list(range(args.groups))
    inputs = {
        "lengths": torch.randint(1, 200, rewards.shape, device=device).float(),
        "baseline_rewards": torch.randint(0, 2, rewards.shape[:1], device=device).float(),
    }
    print(
        f"device {device}, {args.threads} CPU thread(s), rewards {args.groups} x {args.group_size}, "
        f"torch {torch.__version__}"
    )

    estimators = {name: get_estimator(name) for name in ESTIMATORS}
    estimators["rae (per_prompt)"] = get_estimator("rae", per_prompt=True)
    calls = {name: (lambda est=est: est(rewards, ids, **inputs)) for name, est in estimators.items()}
    costs = timed_side_by_side(calls, device, repeats=200)
    for name, cost in costs.items():
        print(f"{name:24s} {cost * 1e6:10.1f} us  {cost / costs['grpo']:5.2f}x grpo")
    worst = max(costs, key=costs.get)

    krpo = get_estimator("krpo")
    want = paper_loop(rewards)
    assert torch.allclose(krpo(rewards), want, rtol=1e-4, atol=1e-3), "vectorised krpo disagrees with the loop"
    loop_cost = timed(lambda: paper_loop(rewards), device, repeats=3, warmup=1)
    rows = rewards.double().cpu().tolist()
    python_cost = timed(lambda: reference.krpo(rows), torch.device("cpu"), repeats=5, warmup=1)
    print(f"{'paper loop (torch)':24s} {loop_cost * 1e6:10.1f} us")
    print(f"{'python loop':24s} {python_cost * 1e6:10.1f} us")
    print(f"speed-up of krpo over the pure-Python loop: {python_cost / costs['krpo']:.0f}x")
    print(
        f"most expensive estimator: {worst} at {costs[worst] / costs['grpo']:.2f}x grpo (goal <= 3x); "
        f"vectorised krpo {loop_cost / costs['krpo']:.0f}x faster than the paper's loop (goal >= 200x)"
    )


if __name__ == "__main__":
    main()
