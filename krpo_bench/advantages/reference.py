"""Plain per-rollout loops of each estimator's definition (KRPO.md, ESTIMATORS.md).

These are the oracle the vectorised estimators are tested against and the baseline the speed
benchmark measures; they are deliberately literal and slow. NaN rewards are skipped as in the
vectorised code. Each is named in its estimator's catalog row and called as that row describes
(:class:`krpo_bench.advantages.catalog.Entry`): the rewards, the parameters by field name, and by
keyword the ``lengths``, ``baseline_rewards``, ``prompt_ids`` or cross-step ``state`` it uses.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

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
    state: dict[Hashable, tuple[float, float]],
    **params,
) -> list[list[float]]:
    """Filters each group from its prompt's stored (x, P) and updates ``state`` in place."""
    x0, P0 = params.pop("x0", 0.0), params.pop("P0", 1.0)
    out, new_states = [], {}
    for group, pid in zip(rewards, prompt_ids):
        sx, sP = state.get(pid, (x0, P0))
        adv, x, P = kalman_group(group, x0=sx, P0=sP, **params)
        out.append(adv)
        new_states[pid] = (x, P)
    state.update(new_states)
    return out


def opo(rewards: list[list[float]], lengths: list[list[float]]) -> list[list[float]]:
    out = []
    for group, lens in zip(rewards, lengths):
        pairs = [(r, n) for r, n in zip(group, lens) if not math.isnan(r)]
        total = sum(n for _, n in pairs)
        if len(pairs) < 2:
            b = 0.0
        elif total > 0:
            b = sum(r * n for r, n in pairs) / total
        else:
            b = _mean([r for r, _ in pairs])
        out.append([0.0 if math.isnan(r) else r - b for r in group])
    return out


def gpg(rewards: list[list[float]], alpha: str = "paper") -> list[list[float]]:
    scored = [r for g in rewards for r in _valid(g)]
    if alpha == "verl":
        informative = sum(1 for r in scored if r != 0)
    else:
        flat = sum(len(_valid(g)) for g in rewards if len(_valid(g)) > 1 and len(set(_valid(g))) == 1)
        informative = len(scored) - flat
    a = len(scored) / max(1, informative)
    out = []
    for group in rewards:
        vals = _valid(group)
        m = _mean(vals) if len(vals) > 1 else 0.0
        out.append([0.0 if math.isnan(r) else (r - m) * a for r in group])
    return out


def grpo_passk(rewards: list[list[float]], norm_by_std: bool = True, eps: float = 1e-6) -> list[list[float]]:
    out = []
    for group in rewards:
        row = [0.0] * len(group)
        vals = sorted(_valid(group), reverse=True)
        if len(vals) >= 2:
            best = max((i for i, r in enumerate(group) if not math.isnan(r)), key=lambda i: group[i])
            s = _std(vals) + eps if norm_by_std else 1.0
            row[best] = (vals[0] - vals[1]) / s
        out.append(row)
    return out


def remax(rewards: list[list[float]], baseline_rewards: list[float]) -> list[list[float]]:
    return [[0.0 if math.isnan(r) or math.isnan(b) else r - b for r in g] for g, b in zip(rewards, baseline_rewards)]


def maxrl(rewards: list[list[float]]) -> list[list[float]]:
    out = []
    for group in rewards:
        valid = _valid(group)
        m = _mean(valid)
        zero = m <= 1e-12 * max((abs(r) for r in valid), default=0.0)  # zero up to the sum's rounding
        out.append([0.0 if math.isnan(r) or zero else (r - m) / m for r in group])
    return out


def js_shrinkage(rewards: list[list[float]]) -> list[list[float]]:
    groups = [_valid(g) for g in rewards]
    eligible = [i for i, vals in enumerate(groups) if len(vals) >= 2]
    n = len(eligible)
    mu = {i: _mean(groups[i]) for i in eligible}
    v = {i: sum((r - mu[i]) ** 2 for r in groups[i]) / (len(groups[i]) * (len(groups[i]) - 1)) for i in eligible}
    out = []
    for i, group in enumerate(rewards):
        if i not in mu:
            out.append([0.0] * len(group))
            continue
        lam, mubar = 0.0, 0.0
        if n >= 2:
            others = [k for k in eligible if k != i]
            mubar = _mean([mu[k] for k in others])
            v_other = _mean([v[k] for k in others])
            s_other = sum((mu[k] - mubar) ** 2 for k in others) / (n - 1)
            if v_other + s_other > 1e-12:
                lam = (n - 1) / n * v_other / (v_other + s_other)
        row = []
        for j, r in enumerate(group):
            if math.isnan(r):
                row.append(0.0)
                continue
            loo = _mean(_valid([o for jj, o in enumerate(group) if jj != j]))
            row.append(r - ((1 - lam) * loo + lam * mubar))
        out.append(row)
    return out


def rae(
    rewards: list[list[float]],
    state: dict,
    decay: float = 0.95,
    per_prompt: bool = False,
    prompt_ids: Sequence[Hashable] | None = None,
) -> list[list[float]]:
    """One rollout at a time in row-major order; ``state`` holds ``baseline`` (global) or
    ``baselines`` (by ``prompt_ids``, when ``per_prompt``) and is updated in place."""
    out = []
    written = {}
    for g, group in enumerate(rewards):
        b = state.setdefault("baselines", {}).get(prompt_ids[g], 0.0) if per_prompt else state.get("baseline", 0.0)
        row = []
        for r in group:
            if math.isnan(r):
                row.append(0.0)
                continue
            row.append(r - b)
            b = decay * b + (1 - decay) * r
        if per_prompt:
            written[prompt_ids[g]] = b
        else:
            state["baseline"] = b
        out.append(row)
    if per_prompt:
        state["baselines"].update(written)
    return out


def running_norm(
    rewards: list[list[float]], state: dict, center: str = "running", scale: str = "running", eps: float = 1e-6
) -> list[list[float]]:
    """ROLL's RunningMoments: ``state`` holds mean, var, count (start 0, 1, 1e-24), updated in place."""
    seen = [r for g in rewards for r in _valid(g)]
    mean, var, count = state.get("mean", 0.0), state.get("var", 1.0), state.get("count", 1e-24)
    if seen:
        n = len(seen)
        batch_mean = sum(seen) / n
        batch_var = sum((r - batch_mean) ** 2 for r in seen) / n
        delta = batch_mean - mean
        total = count + n
        var = (var * count + delta**2 * count * n / total + batch_var * n) / total
        mean = mean + delta * n / total
        count = total
    state.update(mean=mean, var=var, count=count)
    std = math.sqrt(var * count / (count - 1)) if count > 1 else 0.0
    s = std + eps if scale == "running" else 1.0
    out = []
    for group in rewards:
        m = mean if center == "running" else _mean(_valid(group))
        out.append([0.0 if math.isnan(r) else (r - m) / s for r in group])
    return out


def ebpo(
    rewards: list[list[float]], state: dict, normalize: str = "global_std", eps: float = 1e-6
) -> list[list[float]]:
    """Welford one value at a time over rewards and over group means; ``state`` updated in place."""

    def welford(key: str, x: float) -> None:
        n, mean, m2 = state.get(key, (0, 0.0, 0.0))
        n += 1
        delta = x - mean
        mean += delta / n
        state[key] = (n, mean, m2 + delta * (x - mean))

    def variance(key: str) -> float:
        n, _, m2 = state.get(key, (0, 0.0, 0.0))
        return m2 / (n - 1) if n >= 2 else 0.0

    for group in rewards:
        for r in _valid(group):
            welford("rewards", r)
    for group in rewards:
        if _valid(group):
            welford("group_means", _mean(_valid(group)))
    sigma2, tau2 = variance("rewards"), variance("group_means")
    prior = state.get("rewards", (0, 0.0, 0.0))[1]
    centred = []
    for group in rewards:
        vals = _valid(group)
        noise = sigma2 / max(1, len(vals))
        shrink = tau2 / (tau2 + noise) if tau2 + noise > 0 else 1.0
        v = shrink * _mean(vals) + (1 - shrink) * prior
        centred.append([math.nan if math.isnan(r) else r - v for r in group])
    s = {"global_std": math.sqrt(sigma2) + eps, "none": 1.0}.get(normalize)
    if s is None:
        s = _std([a for g in centred for a in _valid(g)]) + eps
    return [[0.0 if math.isnan(a) else a / s for a in g] for g in centred]
