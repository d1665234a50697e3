"""What a server accepts beyond a valid spec: no remote code, local files only under the data roots,
caps on trials, on model size, on free lists and on the bytes a study stores, and priorities above
the default only from admins. Pure functions over specs; every refusal is a spec error naming its path.

A request's cost is bounded by its body, not multiplied by its trials: the bytes its trial configs
would store are estimated from the body before anything is expanded, then summed exactly over its
distinct configs (each variant x grid point once, times its seeds), and every policy check runs on
each distinct config (a search: its base, each value of its space, and the space's largest values)."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from pydantic import ValidationError

from krpo_bench.data_roots import under_roots
from krpo_bench.models.config import TINY_ARITH
from krpo_bench.models.memory import model_shape
from krpo_bench.probe.checkpoint import CheckpointNotFound
from krpo_bench.probe.spec import CheckpointRef, ProbeSpec
from krpo_bench.service.db import StudyKind
from krpo_bench.service.kinds import submitted_handler
from krpo_bench.settings import DEFAULT_MAX_MODEL_PARAMS, DEFAULT_MAX_STORED_BYTES, DEFAULT_MAX_TRIALS
from krpo_bench.spec.loading import SpecError, validation_errors
from krpo_bench.spec.study import StudySpec, storage_errors, validate_study
from krpo_bench.spec.trial import TrialSpec


@dataclass(frozen=True)
class Policy:
    """What this server allows: a view of the settings of the same names
    (``settings_view(Policy, api_settings)``)."""

    data_roots: tuple[Path, ...]
    allow_remote_code: bool = False
    max_trials: int = DEFAULT_MAX_TRIALS
    max_model_params: int = DEFAULT_MAX_MODEL_PARAMS
    max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES


MAX_ITEMS = 1_000  # entries of any list, keys of any mapping, anywhere in a submitted spec
FREE_LISTS = {"task.templates": (100, 1_000), "model.lora.target_modules": (100, 200)}
"""Free lists of a trial config: (most items, most characters per item)."""
FREE_TEXT = {
    "task.path": 4_096,
    "task.test_path": 4_096,
    "task.question_field": 200,
    "task.answer_field": 200,
    "task.id_field": 200,
}
"""Free text fields of a trial config: most characters."""
JOB_OVERHEAD_BYTES = 1_000  # what a job stores beside its trial config: ids, tags, labels (names are <= 200 characters)


def _error(path: str, value: Any, message: str, rule: str) -> dict[str, Any]:
    return {"path": path, "value": value, "message": message, "type": rule}


def looks_local(source: str) -> bool:
    """Whether a dataset/model source names a local path rather than a hub id (``org/name``)."""
    parts = PurePath(source).parts
    return source.startswith(("/", "~", ".")) or "\\" in source or ".." in parts or os.path.isdir(source)


def trial_violations(trial: TrialSpec | ProbeSpec, policy: Policy) -> Iterator[tuple[str, Any, str, str]]:
    """(field, value, message, rule) for everything in one trial config (or a probe's model and
    task) this server refuses."""
    model, task = trial.model, trial.task
    yield from size_violations(trial)
    if model.trust_remote_code and not policy.allow_remote_code:
        yield (
            "model.trust_remote_code",
            True,
            "this server does not run remote code from model repositories",
            "remote_code_refused",
        )
    local: list[tuple[str, str, str]] = []  # (field, its value, the path it names)
    if model.hf_source and looks_local(model.hf_source):
        local.append(("model.name", model.name, model.hf_source))
    if task.kind == "jsonl":
        local += [("task.path", task.path, task.path)] + (
            [("task.test_path", task.test_path, task.test_path)] if task.test_path else []
        )
    if task.kind == "hf" and looks_local(task.dataset):
        local.append(("task.dataset", task.dataset, task.dataset))
    roots = ", ".join(str(r) for r in policy.data_roots)
    outside = [(field, value) for field, value, path in local if not under_roots(path, policy.data_roots)]
    for field, value in outside:
        yield (
            field,
            value,
            f"local paths must be absolute and lie under the data roots ({roots})",
            "path_outside_data_roots",
        )
    shape = None if any(field == "model.name" for field, _ in outside) else model_shape(model)
    if shape is not None and shape.parameters > policy.max_model_params:
        field = "model.tiny" if model.name == TINY_ARITH else "model.name"
        yield (
            field,
            shape.parameters,
            f"the model has about {shape.parameters:,} parameters; this server allows at most "
            f"{policy.max_model_params:,} (KRPO_BENCH_MAX_MODEL_PARAMS)",
            "model_too_large",
        )


def _field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def size_violations(trial: TrialSpec | ProbeSpec) -> Iterator[tuple[str, Any, str, str]]:
    """(field, value, message, rule) for every free list or text of a trial config (or a probe's
    model and task) longer than this server's caps (``FREE_LISTS``, ``FREE_TEXT``)."""
    for field, (most, chars) in FREE_LISTS.items():
        values = _field(trial, field)
        if not isinstance(values, list):  # unset, or a literal such as "all-linear"
            continue
        if len(values) > most:
            yield field, f"{len(values)} entries", f"at most {most} entries are allowed here", "too_many_items"
        longest = max((len(v) for v in values), default=0)
        if longest > chars:
            yield (
                field,
                f"an entry of {longest} characters",
                f"entries of at most {chars} characters are allowed here",
                "item_too_long",
            )
    for field, chars in FREE_TEXT.items():
        text = _field(trial, field)
        if isinstance(text, str) and len(text) > chars:
            yield field, text, f"at most {chars} characters are allowed here (got {len(text)})", "text_too_long"


@dataclass(frozen=True)
class PlannedConfig:
    """One distinct trial config of a study: the overrides on its base, the trials that share it
    (an ablation's seeds; a search's whole budget for its base, none for a sampled value) and the
    spec paths its overrides come from (``(spec path, dotted field)``), to name in errors."""

    name: str
    overrides: dict[str, Any]
    trials: int
    sources: tuple[tuple[str, str], ...]


def _leaves(override: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted fields an override sets (``{"task": {"path": ...}}`` -> ``task.path``)."""
    for key, value in override.items():
        if isinstance(value, dict) and value and "." not in key:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def planned_configs(study: StudySpec) -> Iterator[PlannedConfig]:
    """Every distinct trial config of ``study``, lazily: an ablation's variants x grid points (its
    seeds share a config), a search's base, each value of its space and the space's largest values."""
    if study.kind == StudyKind.SEARCH:
        yield PlannedConfig("base", {}, study.trial_count(), ())
        largest: dict[str, Any] = {}
        for path, param in (study.space or {}).items():
            samples = param.choices if param.type == "choice" else [param.low, param.high]
            samples = [int(v) for v in samples] if param.type == "int" else samples
            for value in samples:
                yield PlannedConfig("search", {path: value}, 0, ((f"space.{path}", path),))
            numbers = [v for v in samples if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if numbers:
                largest[path] = max(numbers)
        if len(largest) > 1:
            yield PlannedConfig(
                "search", largest, 0, tuple((f"space.{path} (largest values)", path) for path in largest)
            )
        return
    variants = study.variants or {"base": {}}
    grid = study.grid or {}
    seeds = study.look_sizes()[-1]  # a sequential study may run up to its last look's seeds
    for variant, override in variants.items():
        own = tuple((f"variants.{variant}", leaf) for leaf in _leaves(override)) if study.variants else ()
        suffix = f" (variant {variant})" if study.variants else ""
        for combo in itertools.product(*(list(enumerate(values)) for values in grid.values())):
            point = {path: value for path, (_, value) in zip(grid, combo)}
            label = variant + "".join(f" {k.split('.')[-1]}={v}" for k, v in point.items())
            from_grid = tuple((f"grid.{path}[{i}]{suffix}", path) for path, (i, _) in zip(grid, combo))
            yield PlannedConfig(label, {**override, **point}, seeds, from_grid + own)


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _spec_path(config: PlannedConfig, field: str) -> str:
    """Where in the spec ``field`` of ``config`` comes from: a grid value, a variant, or the base."""
    for where, leaf in config.sources:
        if _related(leaf, field):
            return f"{where} ({field})"
    return f"base.{field}"


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def estimated_stored_bytes(study: StudySpec) -> int:
    """The bytes the study's jobs would store, from the spec alone (nothing expanded): each
    trial's base plus its overrides plus ``JOB_OVERHEAD_BYTES``, summed in closed form."""
    base = _json_size(study.base) + JOB_OVERHEAD_BYTES
    if study.kind == StudyKind.SEARCH:
        return study.trial_count() * base
    variants = list((study.variants or {"base": {}}).values())
    axes = list((study.grid or {}).values())
    points = study.grid_points()
    per_seed = len(variants) * points * base + points * sum(_json_size(o) for o in variants)
    per_seed += len(variants) * sum(points // len(values) * sum(_json_size(v) for v in values) for values in axes)
    return study.look_sizes()[-1] * per_seed


def stored_cap_errors(study: StudySpec, policy: Policy, path: str = "") -> list[dict[str, Any]]:
    """An error when the study's estimated stored bytes (:func:`estimated_stored_bytes`) pass the
    server's ``max_stored_bytes``."""
    estimate = estimated_stored_bytes(study)
    return [_stored_error(estimate, study, policy, "about", path)] if estimate > policy.max_stored_bytes else []


def _stored_error(stored: int, study: StudySpec, policy: Policy, qualifier: str, path: str = "") -> dict[str, Any]:
    trials = study.trial_count()
    return _error(
        path,
        f"{stored:,} bytes",
        f"the study's {trials:,} trial configs would store {qualifier} {stored:,} bytes; "
        f"this server stores at most {policy.max_stored_bytes:,} bytes per study (KRPO_BENCH_MAX_STORED_BYTES): "
        "use fewer seeds, variants or grid values, or a smaller base",
        "too_much_stored",
    )


def check_planned(study: StudySpec, policy: Policy) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(refusals that stop everything, policy errors) for the study's distinct trial configs.

    The first list holds the stored-bytes refusal: estimated from the spec before any config is
    built, then summed exactly (each config's JSON, times the trials that share it) while the
    configs are built, stopping as soon as the sum passes ``max_stored_bytes``, so the work done
    is bounded by that setting, not by the trial count. The second holds every other policy
    refusal (remote code, data roots, model size, free lists), checked on each distinct config
    that validates (the others are left to :func:`validate_study`, which names their problem)."""
    too_much = stored_cap_errors(study, policy)
    if too_much:
        return too_much, []
    seed = 0 if study.kind == StudyKind.SEARCH else study.seed_list()[0]
    stored = 0
    errors: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    for config in planned_configs(study):
        try:
            trial = study.trial_config(config.overrides, seed, f"{config.name} seed={seed}")
        except (ValidationError, ValueError):
            continue
        stored += (len(trial.model_dump_json()) + JOB_OVERHEAD_BYTES) * config.trials
        if stored > policy.max_stored_bytes:
            return [_stored_error(stored, study, policy, "at least")], []
        checked = trial.model_dump_json(include={"model", "task"})
        if checked in seen:  # policy reads only the model and the task
            continue
        seen.add(checked)
        for field, value, message, rule in trial_violations(trial, policy):
            errors.setdefault((field, repr(value)), _error(_spec_path(config, field), value, message, rule))
    return [], list(errors.values())


MAX_DEPTH = 32


def check_plain_data(data: Any) -> list[dict[str, Any]]:
    """Errors for NaN/infinite numbers (JSON cannot carry them back), for nesting deeper than
    ``MAX_DEPTH`` levels and for lists or mappings of more than ``MAX_ITEMS`` entries, anywhere in
    submitted data (walked without recursion; a refused list or mapping is not walked)."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(_error(path, str(value), "numbers must be finite", "finite_number"))
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                errors.append(_error(path, None, f"nested deeper than {MAX_DEPTH} levels", "too_deep"))
                continue
            if len(value) > MAX_ITEMS:
                what = "lists hold at most {} entries" if isinstance(value, list) else "mappings hold at most {} keys"
                errors.append(_error(path, f"{len(value)} entries", what.format(MAX_ITEMS), "too_many_items"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                child = (
                    f"{path}[{key}]"
                    if isinstance(key, int) and isinstance(value, list)
                    else f"{path}.{key}"
                    if path
                    else str(key)
                )
                stack.append((child, item, depth + 1))
    return errors


def probe_errors(
    probe: ProbeSpec, policy: Policy, checkpoint_trial: Callable[[CheckpointRef], object] | None = None
) -> list[dict[str, Any]]:
    """Errors for remote code, local paths and model size in a probe, and for its checkpoint: a
    folder must lie under the data roots; a reference ``{study, variant, seed, step, grid}`` must
    name a finished trial, looked up with ``checkpoint_trial`` (``StudyService.checkpoint_trial``;
    None: not looked up, the worker that runs the probe refuses it)."""
    errors = [_error(field, value, message, rule) for field, value, message, rule in trial_violations(probe, policy)]
    if isinstance(probe.checkpoint, str) and not under_roots(probe.checkpoint, policy.data_roots):
        roots = ", ".join(str(r) for r in policy.data_roots)
        errors.append(
            _error(
                "checkpoint",
                probe.checkpoint,
                f"local paths must be absolute and lie under the data roots ({roots})",
                "path_outside_data_roots",
            )
        )
    elif isinstance(probe.checkpoint, CheckpointRef) and checkpoint_trial is not None:
        try:
            checkpoint_trial(probe.checkpoint)
        except CheckpointNotFound as exc:
            value = getattr(probe.checkpoint, exc.field.removeprefix("checkpoint."))
            errors.append(_error(exc.field, value, exc.reason, "checkpoint_not_found"))
    return errors


def admit(
    data: Any,
    policy: Policy,
    source: str = "<request>",
    checkpoint_trial: Callable[[CheckpointRef], object] | None = None,
) -> StudySpec | ProbeSpec:
    """Validate a submitted study and apply the server policy; raises SpecError with every problem.
    ``checkpoint_trial``: looks up the trial a probe's checkpoint reference names (:func:`probe_errors`).

    The trial cap and the stored-bytes estimate are checked before the study's matrix is expanded,
    so a huge matrix costs nothing; the expansion that follows is bounded by ``max_stored_bytes``.
    """
    if not isinstance(data, dict):
        raise SpecError(source, [_error("", type(data).__name__, "spec must be a mapping", "type_error")])
    plain = check_plain_data(data) or storage_errors(data)  # storage_errors walks what the first refuses to
    if plain:
        raise SpecError(source, plain)
    kind = submitted_handler(data)
    if kind.kind is StudyKind.PROBE:  # one job: no trial cap to check
        probe = kind.validate(data, source)
        errors = probe_errors(probe, policy, checkpoint_trial)
        if errors:
            raise SpecError(source, errors)
        return probe
    try:
        shallow = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, validation_errors(exc)) from None
    cap = trial_cap_errors(shallow.trial_count(), policy)
    if cap:
        raise SpecError(source, cap)
    stop, refused = check_planned(shallow, policy)
    if stop:
        raise SpecError(source, stop)
    try:
        study = validate_study(data, source)
    except ValidationError as exc:  # a trial valid alone but not in the full matrix, e.g. its name too long
        raise SpecError(source, [{**e, "path": f"trials ({e['path']})"} for e in validation_errors(exc)]) from None
    if refused:
        raise SpecError(source, refused)
    return study


def trial_cap_errors(trials: int, policy: Policy, path: str = "") -> list[dict[str, Any]]:
    """An error when a study would hold more than the server's ``max_trials``."""
    if trials <= policy.max_trials:
        return []
    return [
        _error(
            path,
            trials,
            f"the study holds {trials} trials; this server allows at most {policy.max_trials}",
            "too_many_trials",
        )
    ]
