"""One count and one set of values for a grid search's stepped parameters: the spec's validation
counts the points the grid sampler then visits, and each value is the decimal the user wrote."""

from __future__ import annotations

import math

import optuna
import pytest
from krpo_bench.api.policy import estimated_stored_bytes, planned_configs

from krpo_bench.service.optuna_store import distribution, make_sampler
from krpo_bench.spec.loading import SpecError
from krpo_bench.spec.study import MAX_GRID_POINTS, SearchParam, StudySpec, grid_size, grid_values, validate_study
from tests.trial_specs import tiny_trial

BASE = {**{k: v for k, v in tiny_trial(steps=5).items() if k != "name"}, "estimator": {"name": "krpo"}}


@pytest.mark.parametrize(
    ("param", "values"),
    [
        ({"type": "uniform", "low": 0.0, "high": 0.3, "step": 0.1}, [0.0, 0.1, 0.2, 0.3]),
        ({"type": "uniform", "low": 0.1, "high": 0.7, "step": 0.2}, [0.1, 0.3, 0.5, 0.7]),
        ({"type": "uniform", "low": 0.0, "high": 0.35, "step": 0.1}, [0.0, 0.1, 0.2, 0.3]),  # stops below high
        (
            {"type": "log_uniform", "low": 1e-5, "high": 1e-4, "step": 1e-5},
            [1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 8e-5, 9e-5, 1e-4],
        ),
        ({"type": "int", "low": 2, "high": 9, "step": 3}, [2, 5, 8]),
        ({"type": "int", "low": 1, "high": 3}, [1, 2, 3]),
        ({"type": "choice", "choices": ["a", 0.5]}, ["a", 0.5]),
    ],
)
def test_grid_values_are_the_decimals_written_and_their_count(param, values):
    spec = SearchParam.model_validate(param)
    assert grid_values(spec) == values
    assert [repr(v) for v in grid_values(spec)] == [repr(v) for v in values]
    assert grid_size(spec) == len(values)


def _search(space: dict) -> dict:
    return {"name": "grid", "kind": "search", "base": BASE, "space": space, "sampler": "grid", "n_trials": 4}


def test_the_grid_sampler_visits_exactly_the_points_validation_counted():
    space = {
        "training.beta": {"type": "uniform", "low": 0.0, "high": 0.3, "step": 0.1},
        "training.group_size": {"type": "int", "low": 4, "high": 8, "step": 2},
    }
    spec = validate_study(_search(space))
    expected = math.prod(grid_size(p) for p in spec.space.values())
    assert expected == 12
    study = optuna.create_study(sampler=make_sampler(spec))
    dists = {path: distribution(p) for path, p in spec.space.items()}
    trials = [study.ask(dists) for _ in range(expected)]  # in flight at once, as the service asks them
    seen = {(t.params["training.beta"], t.params["training.group_size"]) for t in trials}
    assert seen == {(r, g) for r in (0.0, 0.1, 0.2, 0.3) for g in (4, 6, 8)}


def test_validation_counts_every_grid_point_against_the_limit():
    per_axis = {"type": "uniform", "low": 0.0, "high": 0.3, "step": 0.1}  # 4 points (never 3)
    fits = MAX_GRID_POINTS // 4
    ok = {"training.beta": per_axis, "training.max_steps": {"type": "int", "low": 1, "high": fits}}
    validate_study(_search(ok))
    over = {"training.beta": per_axis, "training.max_steps": {"type": "int", "low": 1, "high": fits + 1}}
    with pytest.raises(SpecError, match="more than 100000 points"):
        validate_study(_search(over))


def test_an_int_grid_step_below_one_is_an_error_naming_it():
    space = {"training.group_size": {"type": "int", "low": 2, "high": 8, "step": 0.5}}
    with pytest.raises(SpecError) as info:
        validate_study(_search(space))
    assert "space.training.group_size.step" in str(info.value)
    assert "whole numbers" in str(info.value)
    assert isinstance(StudySpec.model_validate(_search(space)), StudySpec)  # the schema alone accepts it


def test_an_ablation_grid_has_one_count_that_its_plan_the_trial_cap_and_the_stored_estimate_share():
    spec = StudySpec.model_validate(
        {
            "name": "grid",
            "kind": "ablation",
            "seeds": 2,
            "base": BASE,
            "variants": {"a": {"estimator": {"name": "grpo"}}, "b": {}},
            "grid": {"training.beta": [0.0, 0.1, 0.2], "training.group_size": [4, 8]},
        }
    )
    assert spec.grid_points() == 6
    assert spec.trial_count() == len(spec.plan()) == 2 * 6 * 2
    distinct = list(planned_configs(spec))
    assert len(distinct) == 2 * spec.grid_points() and sum(c.trials for c in distinct) == spec.trial_count()
    one_axis = spec.model_copy(update={"grid": {"training.beta": [0.0, 0.1, 0.2]}})
    no_grid = spec.model_copy(update={"grid": None})
    assert (one_axis.grid_points(), no_grid.grid_points()) == (3, 1)
    assert estimated_stored_bytes(no_grid) < estimated_stored_bytes(one_axis) < estimated_stored_bytes(spec)
