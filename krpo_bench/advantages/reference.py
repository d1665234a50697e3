"""Plain per-rollout loops of each estimator's definition (KRPO.md).

These are the oracle the vectorised estimators are tested against and the baseline the speed
benchmark measures; they are deliberately literal and slow. NaN rewards are skipped as in the
vectorised code.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

GRPO_EPS = 1e-4


def _valid(group: Sequence[float]) -> list[float]:
    return [r for r in group if not math.isnan(r)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def grpo(rewards: list[list[float]], scale: str = "group", eps: float = GRPO_EPS) -> list[list[float]]:
    flat = [r for g in rewards for r in _valid(g)]
    out = []
    for group in rewards:
        vals = _valid(group)
        m = _mean(vals)
        s = {"group": _std(vals) + eps, "batch": _std(flat) + eps, "none": 1.0}[scale]
        out.append([0.0 if math.isnan(r) else (r - m) / s for r in group])
    return out


def dr_grpo(rewards: list[list[float]]) -> list[list[float]]:
    return [[0.0 if math.isnan(r) else r - _mean(_valid(g)) for r in g] for g in rewards]


def rloo(rewards: list[list[float]]) -> list[list[float]]:
    out = []
    for group in rewards:
        row = []
        for i, r in enumerate(group):
            others = _valid([o for j, o in enumerate(group) if j != i])
            row.append(0.0 if math.isnan(r) or not others else r - _mean(others))
        out.append(row)
    return out


def reinforce_pp_baseline(rewards: list[list[float]], eps: float = 1e-8) -> list[list[float]]:
    centred = [[r - _mean(_valid(g)) for r in g] for g in rewards]
    flat = [a for g in centred for a in _valid(g)]
    m, s = _mean(flat), _std(flat)
    return [[0.0 if math.isnan(a) else (a - m) / (s + eps) for a in g] for g in centred]


def kalman_group(
    group: Sequence[float],
    Q: float = 1e-5,
    R: float = 1e-2,
    x0: float = 0.0,
    P0: float = 1.0,
    estimate: str = "posterior",
    normalize: str = "posterior_std",
    eps: float = 1e-8,
) -> tuple[list[float], float, float]:
    """One group through the filter, one reward at a time; returns (advantages, x, P) at the end."""
    x, P = x0, P0
    gstd = _std(_valid(group))
    out = []
    for z in group:
        if math.isnan(z):
            out.append(0.0)
            continue
        prior = x
        P_pred = P + Q
        K = P_pred / (P_pred + R)
        x = x + K * (z - x)
        P = (1 - K) * P_pred
        base = x if estimate == "posterior" else prior
        s = {
            "posterior_std": math.sqrt(P) + eps,
            "innovation_std": math.sqrt(P_pred + R) + eps,
            "group_std": gstd + GRPO_EPS,
            "none": 1.0,
        }[normalize]
        out.append((z - base) / s)
    return out, x, P


def krpo(rewards: list[list[float]], **params) -> list[list[float]]:
    return [kalman_group(g, **params)[0] for g in rewards]


def krpo_prior(rewards: list[list[float]], **params) -> list[list[float]]:
    params = {"estimate": "prior", "normalize": "innovation_std", **params}
    return krpo(rewards, **params)


def krpo_persistent(
    rewards: list[list[float]],
    prompt_ids: Sequence[Hashable],
    states: dict[Hashable, tuple[float, float]],
    **params,
) -> list[list[float]]:
    """Filters each group from its prompt's stored (x, P) and updates ``states`` in place."""
    x0, P0 = params.pop("x0", 0.0), params.pop("P0", 1.0)
    out, new_states = [], {}
    for group, pid in zip(rewards, prompt_ids):
        sx, sP = states.get(pid, (x0, P0))
        adv, x, P = kalman_group(group, x0=sx, P0=sP, **params)
        out.append(adv)
        new_states[pid] = (x, P)
    states.update(new_states)
    return out
