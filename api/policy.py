"""What a server accepts beyond a valid spec: no remote code, local files only under the data roots,
a cap on trials and on model size, and priorities above the default only from admins. Pure functions
over specs; every refusal is a spec error naming its path."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from pydantic import ValidationError

from krpo_bench.models.config import TINY_ARITH
from krpo_bench.models.memory import model_shape
from krpo_bench.probe.spec import ProbeSpec, validate_probe
from krpo_bench.settings import DEFAULT_MAX_MODEL_PARAMS
from krpo_bench.spec.loading import SpecError, validation_errors
from krpo_bench.spec.study import StudySpec, storage_errors, validate_study
from krpo_bench.spec.trial import TrialSpec


@dataclass(frozen=True)
class Policy:
    """What this server allows (from ``ApiSettings``)."""

    data_roots: tuple[Path, ...]
    allow_remote_code: bool = False
    max_trials: int = 1_000
    max_model_params: int = DEFAULT_MAX_MODEL_PARAMS


def _error(path: str, value: Any, message: str, rule: str) -> dict[str, Any]:
    return {"path": path, "value": value, "message": message, "type": rule}


def looks_local(source: str) -> bool:
    """Whether a dataset/model source names a local path rather than a hub id (``org/name``)."""
    parts = PurePath(source).parts
    return source.startswith(("/", "~", ".")) or "\\" in source or ".." in parts or Path(source).is_dir()


def under_roots(path: str, roots: tuple[Path, ...]) -> bool:
    """Whether ``path`` (absolute after ``~`` expansion) resolves, symlinks and ``..`` included,
    inside one of ``roots``."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        return False
    resolved = Path(os.path.realpath(candidate))
    return any(resolved.is_relative_to(os.path.realpath(root)) for root in roots)


def trial_violations(trial: TrialSpec | ProbeSpec, policy: Policy) -> Iterator[tuple[str, Any, str, str]]:
    """(field, value, message, rule) for everything in one trial config (or a probe's model and
    task) this server refuses."""
    model, task = trial.model, trial.task
    if model.trust_remote_code and not policy.allow_remote_code:
        yield "model.trust_remote_code", True, "this server does not run remote code from model repositories", "remote_code_refused"
    local: list[tuple[str, str, str]] = []  # (field, its value, the path it names)
    if model.hf_source and looks_local(model.hf_source):
        local.append(("model.name", model.name, model.hf_source))
    if task.kind == "jsonl":
        local += [("task.path", task.path, task.path)] + ([("task.test_path", task.test_path, task.test_path)] if task.test_path else [])
    if task.kind == "hf" and looks_local(task.dataset):
        local.append(("task.dataset", task.dataset, task.dataset))
    roots = ", ".join(str(r) for r in policy.data_roots)
    outside = [(field, value) for field, value, path in local if not under_roots(path, policy.data_roots)]
    for field, value in outside:
        yield field, value, f"local paths must be absolute and lie under the data roots ({roots})", "path_outside_data_roots"
    shape = None if any(field == "model.name" for field, _ in outside) else model_shape(model)
    if shape is not None and shape.parameters > policy.max_model_params:
        field = "model.tiny" if model.name == TINY_ARITH else "model.name"
        yield (field, shape.parameters, f"the model has about {shape.parameters:,} parameters; this server allows at most "
               f"{policy.max_model_params:,} (KRPO_BENCH_MAX_MODEL_PARAMS)", "model_too_large")


def _trial_sources(study: StudySpec) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every override a trial field can take its value from, with the spec path that sets it."""
    yield "base", {}
    for name, override in (study.variants or {}).items():
        yield f"variants.{name}", override
    for path, values in (study.grid or {}).items():
        for i, value in enumerate(values):
            yield f"grid.{path}[{i}]", {path: value}
    for path, param in (study.space or {}).items():
        samples = param.choices if param.type == "choice" else [param.low, param.high]
        for value in samples:
            yield f"space.{path}", {path: int(value) if param.type == "int" else value}


def check_paths_and_code(study: StudySpec, policy: Policy) -> list[dict[str, Any]]:
    """Errors for remote code and local paths anywhere in the study's trial configs."""
    seed = 0 if study.kind == "search" else study.seed_list()[0]  # as validate_study checks them
    errors: dict[tuple[str, str], dict[str, Any]] = {}
    for where, override in _trial_sources(study):
        trial = study.trial_config(override, seed, where)
        for field, value, message, rule in trial_violations(trial, policy):
            path = f"base.{field}" if where == "base" else f"{where} ({field})"
            errors.setdefault((field, repr(value)), _error(path, value, message, rule))
    return list(errors.values())


MAX_DEPTH = 32


def check_plain_data(data: Any) -> list[dict[str, Any]]:
    """Errors for NaN/infinite numbers (JSON cannot carry them back) and for nesting deeper than
    ``MAX_DEPTH`` levels, anywhere in submitted data (walked without recursion)."""
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
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                child = f"{path}[{key}]" if isinstance(key, int) and isinstance(value, list) else f"{path}.{key}" if path else str(key)
                stack.append((child, item, depth + 1))
    return errors


def probe_errors(probe: ProbeSpec, policy: Policy) -> list[dict[str, Any]]:
    """Errors for remote code, local paths (the checkpoint's too) and model size in a probe."""
    errors = [_error(field, value, message, rule) for field, value, message, rule in trial_violations(probe, policy)]
    if probe.checkpoint is not None and not under_roots(probe.checkpoint, policy.data_roots):
        roots = ", ".join(str(r) for r in policy.data_roots)
        errors.append(_error("checkpoint", probe.checkpoint, f"local paths must be absolute and lie under the data roots ({roots})",
                             "path_outside_data_roots"))
    return errors


def admit(data: Any, policy: Policy, source: str = "<request>") -> StudySpec | ProbeSpec:
    """Validate a submitted study and apply the server policy; raises SpecError with every problem.

    The trial cap is checked before the study's matrix is expanded, so a huge matrix costs nothing.
    """
    if not isinstance(data, dict):
        raise SpecError(source, [_error("", type(data).__name__, "spec must be a mapping", "type_error")])
    plain = check_plain_data(data) + storage_errors(data)
    if plain:
        raise SpecError(source, plain)
    if data.get("kind") == "probe":  # one job: no trial cap to check
        probe = validate_probe(data, source)
        errors = probe_errors(probe, policy)
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
    study = validate_study(data, source)
    errors = check_paths_and_code(study, policy)
    if errors:
        raise SpecError(source, errors)
    return study


def trial_cap_errors(trials: int, policy: Policy, path: str = "") -> list[dict[str, Any]]:
    """An error when a study would hold more than the server's ``max_trials``."""
    if trials <= policy.max_trials:
        return []
    return [_error(path, trials, f"the study holds {trials} trials; this server allows at most {policy.max_trials}", "too_many_trials")]
