"""How the analysis's numbers read, in the CLI and the HTML report alike (one missing-value mark)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from krpo_bench.analysis.model import Estimate, GridPoint

MISSING = "–"
SCALE = 100.0


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def points(value: float | None, signed: bool = False) -> str:
    """A fraction as points (x100, one decimal; ``+`` shown when ``signed``), or the missing mark."""
    return f"{value * SCALE:{'+' if signed else ''}.1f}" if _finite(value) else MISSING


def signed_points(value: float | None) -> str:
    """`points` with its sign."""
    return points(value, signed=True)


def fraction(value: float | None, decimals: int = 3) -> str:
    """A fraction as is (``0.773``), or the missing mark."""
    return f"{value:.{decimals}f}" if _finite(value) else MISSING


def probability(value: float | None) -> str:
    """A probability with two decimals, or the missing mark."""
    return fraction(value, 2)


def p_value(value: float | None) -> str:
    """A p-value with three significant digits, or the missing mark."""
    return f"{value:.3g}" if _finite(value) else MISSING


def seeds(value: int | None) -> str:
    """A number of seeds, or the missing mark (none feasible)."""
    return MISSING if value is None else str(value)


def interval(estimate: Estimate, fmt: Callable[[float | None], str] = points) -> str:
    """``[low, high]``, or empty when undefined."""
    return f"[{fmt(estimate.low)}, {fmt(estimate.high)}]" if estimate.defined else ""


def with_interval(estimate: Estimate, fmt: Callable[[float | None], str] = points) -> str:
    """``estimate [low, high]`` (bounds left out when undefined)."""
    return f"{fmt(estimate.estimate)} {interval(estimate, fmt)}".strip()


def grid_point(point: GridPoint) -> str:
    """A grid point as its label reads it: ``group_size=2 reward_noise=None`` (last path parts), ``""`` without one."""
    return " ".join(f"{path.split('.')[-1]}={value}" for path, value in point)


def _seeds_phrase(n_x: int, n_y: int) -> str:
    return f"{n_x} seeds" if n_x == n_y else f"{n_x} and {n_y} seeds"


def _level(value: float) -> str:
    return f"{value * 100:g} %"


def verdict_sentence(c: Mapping[str, Any]) -> str:
    """One plain sentence for a judged comparison (a `ComparisonResult`'s fields): better / worse by X
    [CI], equivalent within +-margin (TOST), or undecided with the seeds that would decide it; the
    p-value that decided, Holm-adjusted over the family (raw for an exploratory comparison)."""
    variant, reference = c["label"], c["reference_label"]
    n_x, n_y = c["n_variant"], c["n_reference"]
    lead = f"exploratory ({c['metric']}): " if c["exploratory"] else ""
    if n_x == 0 or n_y == 0:
        return f"{lead}cannot compare {variant} with {reference}: no finished seeds of {variant if n_x == 0 else reference}"
    difference, margin = c["difference"], points(c["margin"])
    if not (_finite(difference.low) and _finite(difference.high)):
        return (
            f"{lead}cannot tell {variant} from {reference}: only one seed of one of them, so no interval "
            f"(difference {signed_points(difference.estimate)} points)"
        )
    how = "paired by seed" if c["analysis"] == "paired" else "unpaired, Welch"
    seeds = _seeds_phrase(n_x, n_y)
    confidence = _level(c["confidence"])
    ci = f"{confidence} CI [{signed_points(difference.low)}, {signed_points(difference.high)}]"
    family = c["family_size"]
    adjusted = "raw, exploratory" if c["exploratory"] else f"Holm over {family} comparison{'s' if family != 1 else ''}"
    p, tost_p = (c["p_value"], c["tost_p"]) if c["exploratory"] else (c["p_holm"], c["tost_p_holm"])
    look = f", look {c['look']} at level {c['difference_level']:.3g}" if c["look"] is not None else ""
    verdict = c["verdict"]
    if verdict in ("better", "worse"):
        word = "beats" if verdict == "better" else "trails"
        return (
            f"{lead}{variant} {word} {reference} by {points(abs(difference.estimate))} points "
            f"({how}, {seeds}: {ci}; p {p_value(p)}, {adjusted}{look})"
        )
    if verdict == "equivalent":
        inner = c["tost_interval"]
        return (
            f"{lead}{variant} is equivalent to {reference} within ±{margin} points ({how}, {seeds}: "
            f"{signed_points(difference.estimate)} points, {_level(1 - 2 * (1 - c['confidence']))} CI "
            f"[{signed_points(inner.low)}, {signed_points(inner.high)}]; TOST p {p_value(tost_p)}, {adjusted}{look})"
        )
    decide = (
        f"about {c['seeds_to_decide']} seeds{'' if c['analysis'] == 'paired' else ' per variant'} would decide it"
        if c["seeds_to_decide"] is not None
        else "no feasible number of seeds would decide it at this spread"
    )
    return (
        f"{lead}undecided between {variant} and {reference}: {signed_points(difference.estimate)} points, {ci} "
        f"({how}, {seeds}); neither a difference nor equivalence within ±{margin} points (p {p_value(p)}, "
        f"TOST p {p_value(tost_p)}, {adjusted}{look}); these seeds detect differences above "
        f"{points(c['mde'])} points; {decide}"
    )
