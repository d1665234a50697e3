"""Study specs: expansion of ablations, validation errors that name the YAML path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from krpo_bench.spec.loading import SpecError, parse_yaml
from krpo_bench.spec.study import validate_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"
QUICKSTART = parse_yaml((STUDIES / "quickstart.yaml").read_bytes())


def study(**changes) -> dict:
    data = copy.deepcopy(QUICKSTART)
    data.update(changes)
    return data


def errors_of(data) -> list[dict]:
    with pytest.raises(SpecError) as info:
        validate_study(data)
    return info.value.errors


def test_ablation_expands_variants_grid_seeds():
    spec = validate_study(study(grid={"training.group_size": [4, 8], "estimator.scale": ["group", "batch"]},
                                variants={"grpo": {"estimator": {"name": "grpo"}}}, seeds=[3, 5]))
    plan = spec.plan()
    assert len(plan) == spec.trial_count() == 8
    assert len({t.key for t in plan}) == 8
    assert {t.spec.training.group_size for t in plan} == {4, 8}
    assert {t.spec.estimator.scale for t in plan} == {"group", "batch"}
    assert {t.seed for t in plan} == {3, 5}
    assert all(t.spec.training.seed == t.seed for t in plan)


def test_variant_with_another_estimator_replaces_the_base_block():
    data = study()
    data["base"]["estimator"] = {"name": "grpo", "scale": "batch"}
    plan = validate_study(data).plan()
    krpo = next(t for t in plan if t.variant == "krpo")
    assert krpo.spec.estimator.name == "krpo" and krpo.spec.estimator.Q == 1e-5


@pytest.mark.parametrize(
    ("changes", "path", "needle"),
    [
        ({"variants": {"krpo": {"estimator": {"name": "krpo", "Qq": 1e-5}}}}, "variants.krpo.estimator.krpo.Qq", "Extra inputs"),
        ({"variants": {"krpo": {"estimator": {"name": "krpo", "R": -1}}}}, "variants.krpo.estimator.krpo.R", "greater than 0"),
        ({"variants": {"x": {"estimator": {"name": "ppo"}}}}, "variants.x.estimator", "does not match"),
        ({"grid": {"training.group_size": [1, 8]}}, "grid.training.group_size[0]", "greater than or equal to 2"),
        ({"grid": {"training.groupsize": [4]}}, "grid.training.groupsize[0]", "Extra inputs"),
        ({"seeds": 0}, "seeds", "1..1000"),
        ({"kind": "sweep"}, "kind", "ablation"),
        ({"typo_key": 1}, "typo_key", "Extra inputs"),
        ({"space": {"estimator.Q": {"type": "log_uniform", "low": 1e-6, "high": 1e-3}}}, "", "belongs to kind: search"),
    ],
)
def test_errors_name_the_path(changes, path, needle):
    errors = errors_of(study(**changes))
    assert any(e["path"].startswith(path) and needle in e["message"] for e in errors), errors


def test_base_errors_are_prefixed():
    data = study()
    data["base"]["training"]["learning_rate"] = "fast"
    assert any(e["path"] == "base.training.learning_rate" for e in errors_of(data))


def test_search_spec_checks_space_paths_and_bounds():
    base = study(kind="search", variants=None, seeds=1, n_trials=4,
                 space={"estimator.Q": {"type": "log_uniform", "low": 1e-6, "high": 1e-3}})
    base["base"]["estimator"] = {"name": "krpo"}
    assert validate_study(base).trial_count() == 4
    bad = copy.deepcopy(base)
    bad["space"]["training.group_size"] = {"type": "int", "low": 1, "high": 8}
    assert any(e["path"].startswith("space.training.group_size") for e in errors_of(bad))
    bad = copy.deepcopy(base)
    bad["space"]["estimator.Q"] = {"type": "log_uniform", "low": 0, "high": 1}
    assert any("log_uniform needs low > 0" in e["message"] for e in errors_of(bad))


def test_enormous_matrix_is_refused():
    errors = errors_of(study(grid={"training.max_steps": list(range(1, 200)), "training.seed": list(range(60))}))
    assert any("at most" in e["message"] for e in errors)


@pytest.mark.parametrize("text", [b"\xff\xfe not utf8", b"a: [1, 2", b"a: &x [1]\nb: *x\n"])
def test_unreadable_yaml_is_a_clear_error(text):
    with pytest.raises(SpecError):
        parse_yaml(text)


def test_every_study_in_the_library_validates():
    files = sorted(STUDIES.glob("*.yaml"))
    assert files
    for path in files:
        data = parse_yaml(path.read_bytes(), str(path))
        if data.get("kind") in ("ablation", "search"):
            validate_study(data, str(path))
