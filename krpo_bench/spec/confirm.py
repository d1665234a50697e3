"""The spec of a confirmation: an ablation re-run on fresh seeds (``krpo-bench confirm``).

A confirmation repeats chosen variants of an ablation, and always its reference, at the same grid on
seeds none of the original's trials (nor an earlier confirmation's) used. It is one pre-declared
test: it has no ``analysis.until_decided``, so it runs its seeds once and is analysed once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from krpo_bench.spec.names import MAX_NAME_CHARS
from krpo_bench.spec.study import StudySpec, validate_study

SUFFIX = " confirm"
"""What a confirmation's name adds to its original's."""


class NotConfirmable(ValueError):
    """A confirmation the original study does not allow (not an ablation, an unknown variant, ...)."""


def confirmation_name(name: str) -> str:
    """``"<name> confirm"``, the original's name shortened where needed to fit a display name."""
    return name[: MAX_NAME_CHARS - len(SUFFIX)] + SUFFIX


def fresh_seeds(used: Iterable[int | None], count: int) -> list[int]:
    """``count`` seeds above the largest of ``used`` (0, 1, ... when none is known)."""
    known = [seed for seed in used if seed is not None]
    start = max(known) + 1 if known else 0
    return list(range(start, start + count))


def confirmation_spec(
    original: StudySpec,
    reference: str | None,
    used_seeds: Iterable[int | None],
    variants: Collection[str] | None = None,
    seeds: int | None = None,
) -> StudySpec:
    """The confirmation of ablation ``original``: ``variants`` (default: all) and ``reference`` at the
    same grid on ``seeds`` fresh seeds (default: as many as the original's first look) above
    ``used_seeds`` (those of its jobs) and every seed its design may still run (``until_decided``).
    NotConfirmable when the original is no ablation or the choice is unusable; SpecError when the
    confirmation's spec is invalid (e.g. its trial names grow too long)."""
    if original.kind != "ablation":
        raise NotConfirmable(f"only an ablation can be confirmed; {original.name!r} is a {original.kind}")
    names = list(original.variants or {"base": {}})
    chosen = list(names) if variants is None else list(dict.fromkeys(variants))
    unknown = [name for name in chosen if name not in names]
    if unknown:
        missing, listed = ", ".join(map(repr, unknown)), ", ".join(names)
        raise NotConfirmable(f"no variant {missing} in {original.name!r}; its variants: {listed}")
    if reference is not None and len(names) > 1 and not set(chosen) - {reference}:
        raise NotConfirmable(f"choose at least one variant besides the reference {reference!r} to confirm")
    count = len(original.seed_list()) if seeds is None else seeds
    if count < 2:
        raise NotConfirmable(f"a confirmation needs at least 2 seeds, got {count}: ask for more seeds")
    data = original.model_dump(mode="json")
    if original.variants is not None:
        data["variants"] = {name: o for name, o in original.variants.items() if name in chosen or name == reference}
    data["name"] = confirmation_name(original.name)
    planned = original.seeds_through(original.look_sizes()[-1])  # a sequential original may add seeds later
    data["seeds"] = fresh_seeds([*used_seeds, *planned], count)
    data["analysis"]["until_decided"] = None
    return validate_study(data, "<confirmation>")
