"""Seeds until decided (``analysis.until_decided``): what each look of a sequential study decides.

A sequential ablation runs its first seeds, then analyses its family (every comparison with the
reference, at each grid point) at the look's nominal levels: the Lan-DeMets O'Brien-Fleming
boundaries of `krpo_bench.sequential` over the planned looks (`StudySpec.look_sizes`), applied to
the Holm-adjusted p-values of the difference test and of the TOST. A comparison is then decided
(better, worse or equivalent) and keeps the seeds it was decided on, or it continues: it and its
reference run `step` more seeds (the next ones of `StudySpec.seeds_through`). At the last look an
open comparison is undecided. Pure functions: the service stores the looks (``studies.looks``) and
enqueues the seeds they ask for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from krpo_bench import sequential
from krpo_bench.analysis.model import ComparisonResult, StudyAnalysis

CONTINUE = "continue"


@dataclass(frozen=True)
class ComparisonDesign:
    """How one comparison is tested: on its first ``seeds`` seeds of the sequential order (None: all
    it has; ``allowed`` holds them) at look ``look`` (None: a fixed design), at these nominal levels
    (the difference test two-sided, each half of the TOST one-sided)."""

    seeds: int | None
    look: int | None
    difference_level: float
    tost_level: float
    allowed: frozenset[int] = frozenset()


def fixed_design(alpha: float) -> ComparisonDesign:
    """A fixed-size comparison: every seed, level alpha for both tests."""
    return ComparisonDesign(None, None, alpha, alpha)


def look_design(look: int, sizes: Sequence[int], alpha: float, seed_order: Sequence[int]) -> ComparisonDesign:
    """A comparison analysed at look ``look`` (1-based) of the planned seed counts ``sizes``, on the
    first ``sizes[look - 1]`` seeds of ``seed_order``."""
    fractions = sequential.information_fractions(sizes)
    return ComparisonDesign(
        seeds=sizes[look - 1],
        look=look,
        difference_level=sequential.nominal_levels(fractions, alpha, two_sided=True)[look - 1],
        tost_level=sequential.nominal_levels(fractions, alpha, two_sided=False)[look - 1],
        allowed=frozenset(seed_order[: sizes[look - 1]]),
    )


def designs(
    looks: Sequence[Mapping[str, Any]], sizes: Sequence[int], alpha: float, seed_order: Sequence[int]
) -> dict[str, ComparisonDesign]:
    """Each comparison's design after the stored ``looks``: the look that decided it (or its latest),
    by comparison label. A comparison no look has seen yet is absent (its caller uses the next look)."""
    latest: dict[str, int] = {}
    for look in looks:
        for decision in look["decisions"]:
            latest[decision["label"]] = look["look"]
    return {label: look_design(number, sizes, alpha, seed_order) for label, number in latest.items()}


def open_labels(looks: Sequence[Mapping[str, Any]]) -> set[str] | None:
    """Labels of the comparisons still continuing after the stored looks (None: no look yet, all open)."""
    if not looks:
        return None
    return {d["label"] for d in looks[-1]["decisions"] if d["verdict"] == CONTINUE}


def next_designs(
    looks: Sequence[Mapping[str, Any]],
    sizes: Sequence[int],
    alpha: float,
    labels: Sequence[str],
    seed_order: Sequence[int],
) -> dict[str, ComparisonDesign]:
    """The designs of the next look: the comparisons still open at it, the decided ones as they were
    (after the last look, every comparison as its look left it)."""
    number = len(looks) + 1
    still = open_labels(looks)
    done = designs(looks, sizes, alpha, seed_order)
    if number > len(sizes) or (still is not None and not still):
        return done
    upcoming = look_design(number, sizes, alpha, seed_order)
    return done | {label: upcoming for label in labels if still is None or label in still}


def decide(analysis: StudyAnalysis, looks: Sequence[Mapping[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """The record of the look just analysed (``analysis`` made with :func:`next_designs`): each open
    comparison's verdict, or ``continue`` before the last look."""
    number = len(looks) + 1
    still = open_labels(looks)
    last = number == len(sizes)
    decisions = []
    for c in analysis.comparisons:
        if still is not None and c.label not in still:
            continue
        verdict = c.verdict if c.verdict != "undecided" or last else CONTINUE
        decisions.append(_decision(c, verdict))
    return {"look": number, "seeds": sizes[number - 1], "decisions": decisions}


def _decision(c: ComparisonResult, verdict: str) -> dict[str, Any]:
    return {
        "label": c.label,
        "variant": c.variant,
        "grid_point": [list(pair) for pair in c.grid_point],
        "reference_label": c.reference_label,
        "verdict": verdict,
        "p_holm": c.p_holm,
        "tost_p_holm": c.tost_p_holm,
        "difference_level": c.difference_level,
        "tost_level": c.tost_level,
    }


def seeds_asked(look: Mapping[str, Any], sizes: Sequence[int]) -> dict[str, int]:
    """Arms (by label) that run more seeds after ``look`` and how many seeds each then has in all:
    every continuing comparison and its reference, up to the next look's size."""
    if look["look"] >= len(sizes):
        return {}
    following = sizes[look["look"]]
    arms: dict[str, int] = {}
    for decision in look["decisions"]:
        if decision["verdict"] == CONTINUE:
            arms[decision["label"]] = following
            arms[decision["reference_label"]] = following
    return arms
