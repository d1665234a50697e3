"""Pydantic schema of a study: an ablation matrix or an Optuna search over trial configurations.

A study has a ``base`` trial config; ablation ``variants`` and ``grid`` entries and search ``space``
entries override it by dotted path (``estimator.Q``, ``training.group_size``). Every trial a study
can produce is validated as a full :class:`TrialSpec`, so a typo anywhere is an error naming it.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from krpo_bench.spec.base import Strict
from krpo_bench.spec.loading import SpecError, validation_errors
from krpo_bench.spec.names import MAX_NAME_CHARS, DisplayName, check_display_name, shown
from krpo_bench.spec.trial import MAX_SEED, TrialSpec

MAX_TRIALS_PER_STUDY = 10_000
MAX_GPUS_PER_TRIAL = 16  # one machine: a multi-GPU trial runs on one worker
MAX_PARALLELISM = 64
"""Search trials in flight at once, at most: the submit request asks Optuna for this many trials
(the rest are asked as trials finish), so it also bounds the work one POST does."""
MAX_SAMPLER_SEED = 2**31 - 1
"""Optuna's samplers seed numpy (below 2**32) with ``sampler_seed`` + trials asked so far."""
MAX_GRID_POINTS = 100_000  # the grid sampler enumerates every point of its space up front
MAX_GRID_VALUES = 1000


class Resources(Strict):
    gpus_per_trial: int = Field(
        1,
        ge=0,
        le=MAX_GPUS_PER_TRIAL,
        description=(
            "GPUs per trial, all on one worker: 0 or 1 runs one process; N > 1 runs N data-parallel "
            "processes through accelerate (N CPU processes on a CPU worker), keeping the batch per step. "
            "A job waits in the queue until a worker has N GPUs free."
        ),
    )
    max_attempts: int = Field(3, ge=1, le=100)
    timeout_s: int | None = Field(None, ge=10, le=30 * 24 * 3600, description="per-trial wall-clock limit")


class SearchParam(Strict):
    type: Literal["log_uniform", "uniform", "int", "choice"]
    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)
    step: float | None = Field(None, gt=0, allow_inf_nan=False)
    choices: list[Any] | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _check_bounds(self) -> SearchParam:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.type == "log_uniform" and self.low <= 0:
            raise ValueError(f"log_uniform needs low > 0, got {self.low}")
        return self


def grid_size(param: SearchParam) -> int:
    """How many points the grid sampler takes from ``param``: its choices, or ``low``, ``low + step``,
    ... up to ``high``, counted in exact decimals (``low 0, high 0.3, step 0.1``: 4 points). A step
    that does not divide the range stops at the last point below ``high``, as Optuna's stepped
    distributions do. An ``int`` parameter steps by whole numbers (default 1)."""
    if param.type == "choice":
        return len(param.choices or [])
    low, high, step = _grid_axis(param)
    return int((high - low) // step) + 1


def grid_values(param: SearchParam) -> list[Any]:
    """The :func:`grid_size` values of ``param`` on the grid, each ``low + i * step`` computed in
    decimals from the values as written (``0.3``, never ``0.30000000000000004``)."""
    if param.type == "choice":
        return list(param.choices or [])
    low, _, step = _grid_axis(param)
    values = [low + i * step for i in range(grid_size(param))]
    return [int(v) for v in values] if param.type == "int" else [float(v) for v in values]


def _grid_axis(param: SearchParam) -> tuple[Decimal, Decimal, Decimal]:
    if param.type == "int":
        step = int(param.step or 1)
        if step < 1:
            raise ValueError(f"an int parameter steps by whole numbers >= 1, got step {param.step}")
        return Decimal(int(param.low)), Decimal(int(param.high)), Decimal(step)
    step = Decimal(repr(param.step)) if param.step is not None else Decimal(1)
    return Decimal(repr(param.low)), Decimal(repr(param.high)), step


class Pruner(Strict):
    type: Literal["none", "median", "hyperband"] = "none"
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="training steps before a trial may be pruned")
    startup_trials: int = Field(
        2, ge=0, le=MAX_TRIALS_PER_STUDY, description="finished trials before the median pruner acts"
    )


class Objective(Strict):
    metric: Literal["final/accuracy", "final/pass_at_k"] = "final/accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"


class UntilDecided(Strict):
    max_seeds: int = Field(..., ge=2, le=1000, description="seeds a comparison may take at most (the last look)")
    step: int = Field(..., ge=1, le=1000, description="seeds added to each undecided comparison after a look")


class Analysis(Strict):
    target_effect: float = Field(
        0.02,
        gt=0,
        le=1,
        description=(
            "the smallest difference in the objective metric (a fraction, 0.02 = 2 points) worth detecting; "
            "each verdict says about how many seeds would detect it at 80 % power, alpha 0.05"
        ),
    )
    equivalence_margin: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "a comparison whose difference lies within +-margin by a TOST is called equivalent "
            "(a fraction, 0.02 = 2 points; default: target_effect)"
        ),
    )
    primary: Literal["final/accuracy", "final/pass_at_k"] = Field(
        "final/accuracy",
        description="the primary endpoint: verdicts and the multiplicity family use it; other endpoints are exploratory",
    )
    until_decided: UntilDecided | None = Field(
        None,
        description=(
            "add seeds until every comparison with the reference is decided: after each batch of seeds the "
            "family is analysed with group-sequential (O'Brien-Fleming) boundaries and `step` seeds are added "
            "to the undecided comparisons, up to `max_seeds`"
        ),
    )

    @property
    def margin(self) -> float:
        """The equivalence margin in effect (``equivalence_margin``, else ``target_effect``)."""
        return self.equivalence_margin if self.equivalence_margin is not None else self.target_effect


def set_path(config: dict, path: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``path == "a.b"``, creating mappings on the way."""
    node = config
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{path}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in recursively (override wins); inputs untouched."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _retagged(out[key], value):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _retagged(base: dict, override: dict) -> bool:
    """An override that names a different estimator/model (``name``) or task (``kind``) replaces."""
    return any(tag in override and tag in base and override[tag] != base[tag] for tag in ("name", "kind"))


def _non_empty(values: list[Any]) -> list[Any]:
    if not values:
        raise ValueError("grid values must not be empty")
    return values


GridValues = Annotated[list[Any], Field(max_length=MAX_GRID_VALUES), AfterValidator(_non_empty)]


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of an ablation: its stable key, variant name, grid point ((dotted path, value) pairs,
    empty without a grid), display label (``"krpo group_size=2"``), seed and full validated config."""

    key: str
    variant: str
    grid_point: tuple[tuple[str, Any], ...]
    label: str
    seed: int
    overrides: dict[str, Any]
    spec: TrialSpec


class StudySpec(Strict):
    """What a researcher submits (YAML or JSON)."""

    name: DisplayName = Field(
        ..., description="display text only: ids, folders and MLflow names come from the study id"
    )
    description: str = Field("", max_length=10_000)
    kind: Literal["ablation", "search"]
    base: dict[str, Any] = Field(..., description="a trial config every trial starts from")
    variants: dict[str, dict[str, Any]] | None = Field(None, max_length=1000)
    grid: dict[str, GridValues] | None = Field(None, max_length=20)
    seeds: list[int] | int = Field(1, description="a list of seeds, or a count (0, 1, ... n-1)")
    space: dict[str, SearchParam] | None = Field(None, max_length=20)
    sampler: Literal["tpe", "random", "grid", "cmaes", "qmc"] = "tpe"
    sampler_seed: int = Field(0, ge=0, le=MAX_SAMPLER_SEED)
    pruner: Pruner = Field(default_factory=Pruner)
    objective: Objective = Field(default_factory=Objective)
    analysis: Analysis = Field(default_factory=Analysis)
    n_trials: int | None = Field(None, ge=1, le=MAX_TRIALS_PER_STUDY)
    parallelism: int = Field(4, ge=1, le=MAX_PARALLELISM, description="search trials in flight at once")
    seeds_per_trial: int = Field(1, ge=1, le=100)
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(0, ge=-1000, le=1000)

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[int] | int) -> list[int] | int:
        if isinstance(seeds, int) and not 1 <= seeds <= 1000:
            raise ValueError(f"seeds as a count must be in 1..1000, got {seeds}")
        if isinstance(seeds, list) and (not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0):
            raise ValueError("seeds must be a non-empty list of distinct non-negative integers")
        if isinstance(seeds, list) and max(seeds) > MAX_SEED:
            raise ValueError(f"seeds must be at most {MAX_SEED}, got {max(seeds)}")
        return seeds

    @model_validator(mode="after")
    def _check_kind(self) -> StudySpec:
        if self.kind == "ablation":
            for field in ("space", "n_trials"):
                if getattr(self, field) is not None:
                    raise ValueError(f"'{field}' belongs to kind: search, not ablation")
            if self.trial_count() > MAX_TRIALS_PER_STUDY:
                raise ValueError(f"the matrix expands to {self.trial_count()} trials; at most {MAX_TRIALS_PER_STUDY}")
        else:
            if not self.space:
                raise ValueError("a search needs a non-empty 'space'")
            if self.n_trials is None:
                raise ValueError("a search needs 'n_trials'")
            if self.variants or self.grid:
                raise ValueError("'variants' and 'grid' belong to kind: ablation, not search")
        until = self.analysis.until_decided
        if until is not None:
            if self.kind != "ablation":
                raise ValueError("'analysis.until_decided' belongs to kind: ablation, not search")
            if until.max_seeds <= len(self.seed_list()):
                raise ValueError(
                    f"analysis.until_decided.max_seeds ({until.max_seeds}) must exceed the seeds of the first "
                    f"look ({len(self.seed_list())})"
                )
            if max(self.seed_list()) + until.max_seeds - len(self.seed_list()) > MAX_SEED:
                raise ValueError(f"analysis.until_decided would run seeds above {MAX_SEED}")
        return self

    def seed_list(self) -> list[int]:
        """The seeds of the first (or only) look."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def look_sizes(self) -> list[int]:
        """Seeds per comparison at each planned look: the first look's seeds, then ``step`` more each
        look up to ``max_seeds`` (``seeds: 5, step 5, max 20`` -> 5, 10, 15, 20); one look without
        ``analysis.until_decided``."""
        first, until = len(self.seed_list()), self.analysis.until_decided
        if until is None:
            return [first]
        return [*range(first, until.max_seeds, until.step), until.max_seeds]

    def seeds_through(self, n: int) -> list[int]:
        """The first ``n`` seeds of the sequential design: the first look's, then the integers above
        their maximum, in order."""
        first = self.seed_list()
        return (first + list(range(max(first) + 1, max(first) + 1 + n - len(first))))[:n]

    def search_seeds(self) -> list[int]:
        """The seeds every search trial runs with: ``seeds_per_trial`` of them."""
        if isinstance(self.seeds, list) and len(self.seeds) >= self.seeds_per_trial:
            return self.seeds[: self.seeds_per_trial]
        return list(range(self.seeds_per_trial))

    def grid_points(self) -> int:
        """How many points the ablation grid holds: the product of its axes' lengths (1 without a grid)."""
        return math.prod(len(values) for values in (self.grid or {}).values())

    def trial_count(self) -> int:
        """How many trials the study holds (for a search: its budget)."""
        if self.kind == "search":
            return (self.n_trials or 0) * self.seeds_per_trial
        return len(self.variants or {"base": {}}) * self.grid_points() * self.look_sizes()[-1]

    def trial_config(self, overrides: dict[str, Any], seed: int, name: str) -> TrialSpec:
        """The base config with ``overrides`` (dotted paths or nested mappings) and ``seed`` applied."""
        config = copy.deepcopy(self.base)
        for path, value in overrides.items():
            if isinstance(value, dict) and "." not in path:
                config = deep_merge(config, {path: value})
            else:
                set_path(config, path, value)
        set_path(config, "training.seed", seed)
        config.setdefault("name", name)
        config["name"] = name
        return TrialSpec.model_validate(config)

    def plan(self, seeds_of: Mapping[str, Sequence[int]] | None = None) -> list[PlannedTrial]:
        """Every ablation trial: variants x grid x seeds, each validated, in a stable order.
        ``seeds_of`` (by label) plans only those labels, each with its own seeds (a sequential look's
        added seeds); by default every label runs the first look's seeds."""
        variants = self.variants or {"base": {}}
        grid_keys = list((self.grid or {}).keys())
        grid_values = list(itertools.product(*[(self.grid or {})[k] for k in grid_keys]))
        trials = []
        for variant, override in variants.items():
            for combo in grid_values:
                point = dict(zip(grid_keys, combo))
                label = variant + "".join(f" {k.split('.')[-1]}={v}" for k, v in point.items())
                if seeds_of is not None and label not in seeds_of:
                    continue
                for seed in self.seed_list() if seeds_of is None else seeds_of[label]:
                    overrides = {**override, **point}
                    spec = self.trial_config(overrides, seed, f"{label} seed={seed}")
                    key = f"{label}|seed={seed}"
                    trials.append(PlannedTrial(key, variant, tuple(point.items()), label, seed, overrides, spec))
        return trials


_GRID_POINT = re.compile(r" [A-Za-z_]\w*=")


def split_label(label: str) -> tuple[str, str]:
    """(variant, grid point) of a trial label as :meth:`StudySpec.plan` writes it:
    ``"krpo group_size=2 reward_noise=None"`` -> ``("krpo", "group_size=2 reward_noise=None")``;
    the point is ``""`` in a study without a grid."""
    found = _GRID_POINT.search(label)
    return (label[: found.start()], label[found.start() + 1 :]) if found else (label, "")


def validate_study(data: Any, source: str = "<study>") -> StudySpec:
    """A StudySpec whose every expandable trial is valid; all problems raise one SpecError."""
    if not isinstance(data, dict):
        raise SpecError(source, [{"path": "", "value": type(data).__name__, "message": "spec must be a mapping"}])
    unstorable = storage_errors(data)
    if unstorable:
        raise SpecError(source, unstorable)
    try:
        study = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, validation_errors(exc)) from None
    errors: list[dict[str, Any]] = []
    if study.kind == "ablation":
        errors += _check_labels(study) or _check_ablation(study)
    else:
        errors += _check_search(study)
    if not errors:
        errors += _check_processes(study)
    if errors:
        raise SpecError(source, errors)
    return study


INT64 = (-(2**63), 2**63 - 1)


def storage_errors(data: Any) -> list[dict[str, Any]]:
    """An error for every string (key or value) holding a NUL character and every integer outside
    int64, anywhere in ``data`` (walked without recursion): the spec is stored whole (SQLite,
    PostgreSQL), including values a trial config later overrides."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and "\x00" in value:
            errors.append(
                {
                    "path": path,
                    "value": value.replace("\x00", "\\x00")[:100],
                    "message": "text must not contain NUL characters",
                    "type": "nul_character",
                }
            )
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            errors.append(
                {
                    "path": path,
                    "value": f"an integer of {len(str(abs(value)))} digits",
                    "message": "integers must fit in 64 bits",
                    "type": "int64_overflow",
                }
            )
        elif isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\x00" in key:
                    stack.append((path, key))
                child = f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}" if path else str(key)
                stack.append((child.replace("\x00", "\\x00"), item))
    return errors


def _check_labels(study: StudySpec) -> list[dict[str, Any]]:
    """Variant keys, grid paths and grid values become trial names (``variant lr=0.1 seed=0``):
    each follows the display-name rule, and the longest trial name fits a name's length."""
    errors: list[dict[str, Any]] = []

    def check(path: str, text: str, value: Any) -> None:
        try:
            check_display_name(text)
        except ValueError as exc:
            errors.append({"path": path, "value": value, "message": str(exc), "type": "display_name"})

    for variant in study.variants or {}:
        check(f"variants.{shown(variant, keep_lines=False)}", variant, variant)
    for path, values in (study.grid or {}).items():
        where = f"grid.{shown(path, keep_lines=False)}"
        check(where, path, path)
        for i, value in enumerate(values):
            check(f"{where}[{i}]", str(value), value)
    if errors:
        return errors
    longest = (
        max(map(len, study.variants or {"base": {}}))
        + sum(max(len(f" {path.split('.')[-1]}={v}") for v in values) for path, values in (study.grid or {}).items())
        + max(len(f" seed={seed}") for seed in study.seed_list())
    )
    if longest > MAX_NAME_CHARS:
        return [
            {
                "path": "grid" if study.grid else "variants",
                "value": f"{longest} characters",
                "type": "display_name",
                "message": f"trial names ('<variant> <grid point> seed=<seed>') must be at most {MAX_NAME_CHARS} "
                "characters: shorten the variant keys or grid values",
            }
        ]
    return []


def _prefixed(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    return [{**e, "path": f"{prefix}.{e['path']}" if e["path"] else prefix} for e in validation_errors(exc)]


def _check_ablation(study: StudySpec) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    seed = study.seed_list()[0]
    try:
        study.trial_config({}, seed, "base")
    except ValidationError as exc:
        return _prefixed(exc, "base")
    for variant, override in (study.variants or {}).items():
        try:
            study.trial_config(override, seed, variant)
        except (ValidationError, ValueError) as exc:
            errors += (
                _prefixed(exc, f"variants.{variant}")
                if isinstance(exc, ValidationError)
                else [{"path": f"variants.{variant}", "value": override, "message": str(exc), "type": "value_error"}]
            )
    for path, values in (study.grid or {}).items():
        for i, value in enumerate(values):
            for variant, override in (study.variants or {"base": {}}).items():
                try:
                    study.trial_config({**override, path: value}, seed, "grid")
                except (ValidationError, ValueError) as exc:
                    errors += _grid_errors(exc, f"grid.{path}[{i}] (variant {variant})", path, value)
    if not errors:
        keys = [t.key for t in study.plan()]
        if len(set(keys)) != len(keys):
            errors.append(
                {"path": "grid", "value": None, "message": "the matrix has duplicate trials", "type": "value_error"}
            )
    return errors


def _grid_errors(exc: Exception, where: str, path: str, value: Any) -> list[dict[str, Any]]:
    if isinstance(exc, ValidationError):
        return [{**e, "path": f"{where} ({e['path']})"} for e in validation_errors(exc)]
    return [{"path": where, "value": value, "message": str(exc), "type": "value_error"}]


def _check_processes(study: StudySpec) -> list[dict[str, Any]]:
    """Every trial's rollouts per step must split evenly over its ``gpus_per_trial`` processes (an
    ablation's whole matrix; a search's base, its sampled values are checked when each trial runs)."""
    processes = study.resources.gpus_per_trial
    if processes <= 1:
        return []
    specs = [t.spec for t in study.plan()] if study.kind == "ablation" else [study.trial_config({}, 0, "base")]
    messages = {}
    for spec in specs:
        try:
            spec.training.micro_batch_size(processes)
        except ValueError as exc:
            messages.setdefault(str(exc), spec.name)
    return [
        {
            "path": "resources.gpus_per_trial",
            "value": processes,
            "message": f"{message} (trial {name!r})",
            "type": "value_error",
        }
        for message, name in messages.items()
    ]


def _check_search(study: StudySpec) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    try:
        study.trial_config({}, 0, "base")
    except ValidationError as exc:
        return _prefixed(exc, "base")
    for path, param in (study.space or {}).items():
        samples = param.choices if param.type == "choice" else [param.low, param.high]
        if param.type == "int":
            samples = [int(param.low), int(param.high)]
        for value in samples:
            try:
                study.trial_config({path: value}, 0, "search")
            except (ValidationError, ValueError) as exc:
                errors += _grid_errors(exc, f"space.{path}", path, value)
    if study.sampler == "grid" and any(
        p.type in ("log_uniform", "uniform") and p.step is None for p in study.space.values()
    ):
        errors.append(
            {
                "path": "sampler",
                "value": "grid",
                "message": "the grid sampler needs choice/int parameters or a step",
                "type": "value_error",
            }
        )
    elif study.sampler == "grid":
        points = 1
        for path, param in study.space.items():
            try:
                points *= grid_size(param)
            except ValueError as exc:
                errors.append(
                    {"path": f"space.{path}.step", "value": param.step, "message": str(exc), "type": "value_error"}
                )
                break
            if points > MAX_GRID_POINTS:
                errors.append(
                    {
                        "path": "space",
                        "value": None,
                        "type": "too_many_grid_points",
                        "message": f"the grid sampler's space holds more than {MAX_GRID_POINTS} points",
                    }
                )
                break
    return errors


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
