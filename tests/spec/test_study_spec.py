"""Study specs: expansion of ablations, validation errors that name the YAML path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from krpo_bench.spec.loading import SpecError, parse_yaml
from krpo_bench.spec.study import validate_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"
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
    spec = validate_study(
        study(
            grid={"training.group_size": [4, 8], "estimator.scale": ["group", "batch"]},
            variants={"grpo": {"estimator": {"name": "grpo"}}},
            seeds=[3, 5],
        )
    )
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
        (
            {"variants": {"krpo": {"estimator": {"name": "krpo", "Qq": 1e-5}}}},
            "variants.krpo.estimator.krpo.Qq",
            "Extra inputs",
        ),
        (
            {"variants": {"krpo": {"estimator": {"name": "krpo", "R": -1}}}},
            "variants.krpo.estimator.krpo.R",
            "greater than 0",
        ),
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


def test_multi_gpu_trials_up_to_one_machine_whose_rollouts_split_evenly():
    assert validate_study(study(resources={"gpus_per_trial": 4})).resources.gpus_per_trial == 4
    assert any(
        e["path"] == "resources.gpus_per_trial" and "less than or equal to 16" in e["message"]
        for e in errors_of(study(resources={"gpus_per_trial": 17}))
    )
    uneven = errors_of(study(resources={"gpus_per_trial": 3}))
    assert [e["path"] for e in uneven] == ["resources.gpus_per_trial"]
    assert "x 3 processes must divide prompts_per_step x group_size (64)" in uneven[0]["message"]


@pytest.mark.parametrize("value", [0, 65])
def test_warm_starts_out_of_range_names_the_field_and_its_range(value):
    data = study()
    data["base"]["model"]["tiny"] = {"warm_starts": value}
    errors = errors_of(data)
    assert [e["path"] for e in errors] == ["base.model.tiny.warm_starts"], errors
    assert f"model.tiny.warm_starts must be from 1 to 64, not {value}" in errors[0]["message"]
    grid = errors_of(study(grid={"model.tiny.warm_starts": [2, value]}))
    assert any(e["path"].startswith("grid.model.tiny.warm_starts[1]") and "1 to 64" in e["message"] for e in grid)


def test_warm_starts_reach_every_trial_of_a_study():
    data = study()
    data["base"]["model"]["tiny"] = {"warm_starts": 4}
    plan = validate_study(data).plan()
    assert {t.spec.model.tiny.warm_starts for t in plan} == {4}
    assert {t.spec.model.tiny.warm_start(t.spec.training.seed).seed for t in plan} == {0, 1, 2}


def test_base_errors_are_prefixed():
    data = study()
    data["base"]["training"]["learning_rate"] = "fast"
    assert any(e["path"] == "base.training.learning_rate" for e in errors_of(data))


def test_search_spec_checks_space_paths_and_bounds():
    base = study(
        kind="search",
        variants=None,
        seeds=1,
        n_trials=4,
        space={"estimator.Q": {"type": "log_uniform", "low": 1e-6, "high": 1e-3}},
    )
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
    from krpo_bench.probe.spec import validate_probe
    from krpo_bench.spec.loading import validate
    from krpo_bench.spec.trial import TrialSpec

    files = sorted(STUDIES.glob("*.yaml"))
    library = {
        "quickstart",
        "paper_llama32_1b",
        "smollm2_gpu",
        "qr_search",
        "group_size_ablation",
        "estimator_zoo",
        "order_sensitivity",
    }
    assert library <= {p.stem for p in files}
    for path in files:
        data = parse_yaml(path.read_bytes(), str(path))
        if data.get("kind") in ("ablation", "search"):
            validate_study(data, str(path))
        elif data.get("kind") == "probe":
            validate_probe(data, str(path))
        else:
            validate(TrialSpec, data, str(path))  # single-trial files (krpo-bench trial FILE)


def test_library_studies_answer_their_questions():
    """The library files set what their comments promise (the paper's setup, the zoo, the search)."""
    from krpo_bench.advantages import CATALOG

    def load(name):
        return validate_study(parse_yaml((STUDIES / f"{name}.yaml").read_bytes()))

    paper = load("paper_llama32_1b")
    trial = paper.plan()[0].spec
    assert trial.model.name == "hf:meta-llama/Llama-3.2-1B-Instruct" and trial.task.prompt_style == "chat_r1"
    assert (trial.training.group_size, trial.training.prompts_per_step, trial.training.learning_rate) == (12, 32, 5e-6)
    assert (trial.training.beta, trial.training.max_completion_length, trial.training.temperature) == (0.01, 1024, 1.0)
    assert (
        tuple(trial.task.num_terms) == (2, 5)
        and tuple(trial.task.num_digits) == (1, 5)
        and len(trial.task.templates) == 5
    )
    assert [r.name for r in trial.task.rewards] == ["paper"] and paper.resources.gpus_per_trial == 1
    krpo = next(t.spec.estimator for t in paper.plan() if t.variant == "krpo")
    assert (krpo.Q, krpo.R) == (1e-5, 1e-2)
    assert {t.spec.estimator.name for t in load("estimator_zoo").plan()} == set(CATALOG)
    assert {t.spec.estimator.name for t in load("smollm2_gpu").plan()} == {"grpo", "krpo", "krpo_prior"}
    assert {t.spec.training.group_size for t in load("group_size_ablation").plan()} == {4, 8, 16}
    order = {(t.spec.estimator.name, t.spec.estimator.shuffle_order) for t in load("order_sensitivity").plan()}
    assert order == {(n, s) for n in ("krpo", "krpo_prior") for s in (False, True)}
    search = load("qr_search")
    assert (
        search.kind == "search"
        and search.sampler == "tpe"
        and search.pruner.type == "median"
        and search.pruner.warmup_steps > 0
    )
    assert (search.space["estimator.Q"].low, search.space["estimator.Q"].high) == (1e-7, 1e-2)
    assert (search.space["estimator.R"].low, search.space["estimator.R"].high) == (1e-4, 1.0)
    assert (
        search.trial_config({}, 0, "x").training.eval_every > 0
        and search.trial_config({}, 0, "x").model.name == "tiny-arith"
    )
