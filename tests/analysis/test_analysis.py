"""The analysis step: records from the jobs table and from MLflow, one typed model, one formatting."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from krpo_bench.dashboards.source import load_study
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from krpo_bench import stats
from krpo_bench.analysis import format as fmt
from krpo_bench.analysis.analyze import AnalysisSettings, analyze
from krpo_bench.analysis.model import ComparisonResult, Estimate, StudyAnalysis, VariantResult, json_ready
from krpo_bench.analysis.records import TrialRecord, legacy_identity, records_from_jobs, records_from_runs
from tests.trial_specs import tiny_trial

GRPO = [0.40, 0.43, 0.41]
KRPO = [0.49, 0.53, 0.50]
INTERVALS = ("difference", "difference_bootstrap", "prob_improvement", "welch_difference")


def _statistics(comparison: Any) -> dict[str, Any]:
    """Every statistic of a `stats.Comparison` or a `ComparisonResult`, NaN as None (to compare exactly)."""
    names = [f.name for f in dataclasses.fields(stats.Comparison) if f.name not in ("variant", "reference", *INTERVALS)]
    values = {name: getattr(comparison, name) for name in names}
    for name in INTERVALS:
        interval = getattr(comparison, name)
        values |= {f"{name}.{part}": getattr(interval, part) for part in ("estimate", "low", "high")}
    return json_ready(values)


def _records(
    variant: str, values: list[float], seeds: list[int], grid_point: tuple = (), label: str | None = None
) -> list[TrialRecord]:
    return [
        TrialRecord(variant, grid_point, label or variant, seed, {"final/accuracy": value})
        for seed, value in zip(seeds, values)
    ]


def test_analyze_reproduces_stats_compare_exactly_paired_and_unpaired() -> None:
    in_finish_order = [2, 0, 1]
    records = _records("krpo", [KRPO[s] for s in in_finish_order], in_finish_order) + _records("grpo", GRPO, [0, 1, 2])
    analysis = analyze(records, AnalysisSettings(target_effect=0.05))
    assert [v.variant for v in analysis.variants] == ["grpo", "krpo"]  # the reference first
    [paired] = analysis.comparisons
    expected = stats.compare(KRPO, GRPO, "krpo", "grpo", [0, 1, 2], [0, 1, 2], 0.05)
    assert paired.analysis == "paired" and _statistics(paired) == _statistics(expected)
    krpo = analysis.variant("krpo")
    assert (
        krpo.seeds == [0, 1, 2]
        and krpo.values == KRPO
        and krpo.mean == Estimate.model_validate(stats.mean_ci(krpo.values))
    )
    assert krpo.iqm == Estimate.model_validate(stats.iqm_ci(krpo.values))

    unpaired = analyze(_records("krpo", KRPO[:2], [0, 1]) + _records("grpo", GRPO, [0, 1, 2]), AnalysisSettings())
    expected = stats.compare(KRPO[:2], GRPO, "krpo", "grpo", [0, 1], [0, 1, 2])
    assert unpaired.comparisons[0].analysis == "unpaired"
    assert _statistics(unpaired.comparisons[0]) == _statistics(expected)


def test_the_reference_is_the_reference_variant_at_the_same_grid_point_from_data() -> None:
    """Labels that say nothing (as a user's custom names might): the pairing comes from variant and grid point."""
    low, high = (("training.group_size", 2),), (("training.group_size", 4),)
    records = (
        _records("krpo", KRPO, [0, 1, 2], high, "A")
        + _records("grpo", GRPO, [0, 1, 2], low, "B")
        + _records("grpo", [v + 0.1 for v in GRPO], [0, 1, 2], high, "C")
        + _records("krpo", KRPO, [0, 1, 2], low, "D")
        + _records("krpo", KRPO, [0, 1, 2], (("x", 1),), "E")
    )
    analysis = analyze(records, AnalysisSettings())
    assert [v.label for v in analysis.variants] == ["B", "C", "A", "D", "E"]
    pairs = {c.label: (c.reference_label, c.reference, c.reference_grid_point) for c in analysis.comparisons}
    assert pairs == {"A": ("C", "grpo", high), "D": ("B", "grpo", low)}  # E: no grpo at its point, no comparison
    assert analysis.comparison("A").difference.estimate == pytest.approx(sum(KRPO) / 3 - sum(GRPO) / 3 - 0.1)
    assert analyze(records, AnalysisSettings(reference=None)).comparisons == []


def test_legacy_rows_fall_back_to_the_label() -> None:
    assert legacy_identity("krpo_prior group_size=2 reward_noise={'flip': 0.2}") == (
        "krpo_prior",
        (("group_size", "2"), ("reward_noise", "{'flip': 0.2}")),
    )
    assert legacy_identity("krpo shuffled") == ("krpo shuffled", ())
    old = SimpleNamespace(
        config={"variant": "krpo group_size=2", "seed": 1},
        status="succeeded",
        result={"final_accuracy": 0.5, "initial_accuracy": 0.25, "final_item_outcomes": [1, 0, 1]},
    )
    new = SimpleNamespace(
        config={"variant": "krpo g2", "variant_name": "krpo", "grid_point": [["training.group_size", 2]], "seed": 1},
        status="failed",
        result={"final_accuracy": 0.9},
    )
    legacy, current = records_from_jobs([old, new])
    assert (legacy.variant, legacy.grid_point, legacy.label) == ("krpo", (("group_size", "2"),), "krpo group_size=2")
    assert legacy.metrics == {"final/accuracy": 0.5, "final/initial_accuracy": 0.25} and legacy.item_outcomes == (
        1,
        0,
        1,
    )
    assert (current.variant, current.grid_point, current.metrics) == ("krpo", (("training.group_size", 2),), {})


def test_nan_is_none_in_json_a_dash_in_text_and_nan_again_when_read_back() -> None:
    records = _records("grpo", [0.4], [0]) + _records("krpo", [0.5, math.nan], [0, 1])
    analysis = analyze(records, AnalysisSettings())
    krpo, compared = analysis.variant("krpo"), analysis.comparisons[0]
    assert krpo.n == 1 and math.isnan(krpo.mean.low) and not krpo.mean.defined and math.isnan(krpo.initial_mean)
    assert compared.seeds_needed is None and math.isnan(compared.mde)
    dumped = analysis.to_json()
    assert json.loads(json.dumps(dumped, allow_nan=False)) == dumped
    row = next(c for c in dumped["comparisons"] if c["variant"] == "krpo")
    assert row["difference"]["low"] is None and row["mde"] is None and dumped["variants"][1]["initial_mean"] is None
    back = StudyAnalysis.model_validate_json(json.dumps(dumped))
    assert math.isnan(back.comparisons[0].mde) and back.comparisons[0].difference.estimate == pytest.approx(0.1)
    assert fmt.points(compared.mde) == fmt.fraction(krpo.initial_mean) == fmt.p_value(math.nan) == fmt.MISSING
    assert fmt.seeds(None) == fmt.MISSING and fmt.with_interval(compared.difference, fmt.signed_points) == "+10.0"
    assert fmt.with_interval(Estimate(estimate=0.773, low=0.742, high=0.805), fmt.fraction) == "0.773 [0.742, 0.805]"
    assert (
        fmt.with_interval(Estimate(estimate=-0.008, low=-0.044, high=0.028), fmt.signed_points) == "-0.8 [-4.4, +2.8]"
    )


def test_columns_json_keys_and_api_schema_all_come_from_the_model_fields() -> None:
    """A statistic added to ComparisonResult (one field) reaches the CSV, the JSON and the API by itself."""
    from krpo_bench.api.schemas import StudyResults

    analysis = analyze(_records("grpo", GRPO, [0, 1, 2]) + _records("krpo", KRPO, [0, 1, 2]), AnalysisSettings())
    expected: list[str] = []
    for model, skip in ((VariantResult, ()), (ComparisonResult, ("variant", "grid_point", "label"))):
        for name, info in model.model_fields.items():
            if name not in skip:
                expected += [name, f"{name}_low", f"{name}_high"] if info.annotation is Estimate else [name]
    assert StudyAnalysis.columns() == expected and list(analysis.rows()[1]) == expected
    reference_row = list(analysis.rows()[0])
    assert reference_row == expected[: len(reference_row)] and reference_row[-1] == "initial_mean"
    dumped = analysis.to_json()
    assert set(dumped["comparisons"][0]) == set(ComparisonResult.model_fields)
    assert set(dumped["variants"][0]) == set(VariantResult.model_fields)
    assert set(dumped) == set(StudyAnalysis.model_fields) | {"reference_found"}
    schema = StudyResults.model_json_schema(mode="serialization")  # what the API's OpenAPI document holds
    assert set(schema["$defs"]["ComparisonResult"]["properties"]) == set(ComparisonResult.model_fields)
    assert set(schema["properties"]) == set(StudyAnalysis.model_fields) | {"reference_found", "study_id"}
    assert StudyResults.of("s", analysis).comparisons == analysis.comparisons


def _finish(service: Any, study_id: str) -> None:
    """Complete every job: grpo/krpo values by seed, +0.2 at group size 4, initial accuracy 0.3."""
    while (job := service.queue.claim("test-worker", 60)) is not None:
        values = KRPO if job.config["variant_name"] == "krpo" else GRPO
        shift = 0.2 if job.config["grid_point"] == [["training.group_size", 4]] else 0.0
        result = {"status": "succeeded", "final_accuracy": values[job.config["seed"]] + shift, "initial_accuracy": 0.3}
        assert service.queue.complete(job.id, job.attempt, result)


def _log_runs(service: Any, study_id: str) -> None:
    """One finished MLflow run per job, tagged as the worker tags it, with the job's final metrics."""
    records = service.ensure_mlflow(study_id)
    client = MlflowClient(service.mlflow_uri)
    for job in service.jobs(study_id):
        run_id = client.create_run(
            records.experiment_id, tags={"mlflow.parentRunId": records.parent_run_id}
        ).info.run_id
        metrics = [
            Metric("final/accuracy", job.result["final_accuracy"], 0, 0),
            Metric("final/initial_accuracy", job.result["initial_accuracy"], 0, 0),
        ]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in job.config["tags"].items()])
        client.set_terminated(run_id)


def test_the_jobs_table_and_mlflow_give_the_same_analysis(tmp_path: Path) -> None:
    from krpo_bench.service.studies import StudyService

    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = {k: v for k, v in tiny_trial(steps=5).items() if k != "name"}
    info = service.submit(
        {
            "name": "grid",
            "kind": "ablation",
            "base": base,
            "seeds": 3,
            "grid": {"training.group_size": [2, 4]},
            "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
        }
    )
    job = service.jobs(info.id)[-1]
    assert (job.config["variant"], job.config["variant_name"], job.config["grid_point"]) == (
        "krpo group_size=4",
        "krpo",
        [["training.group_size", 4]],
    )
    assert job.config["tags"]["krpo.variant_name"] == "krpo"
    assert json.loads(job.config["tags"]["krpo.grid_point"]) == [["training.group_size", 4]]
    _finish(service, info.id)
    _log_runs(service, info.id)

    from_jobs = service.results(info.id)
    from_runs = analyze(
        records_from_runs(load_study(service.mlflow_uri, study_id=info.id)), AnalysisSettings(reference="grpo")
    )
    assert from_jobs.to_json() == from_runs.to_json()
    assert from_jobs == analyze(records_from_jobs(service.jobs(info.id)), AnalysisSettings(reference="grpo"))
    krpo = from_jobs.comparison("krpo group_size=4")
    assert krpo is not None and krpo.reference_label == "grpo group_size=4" and krpo.analysis == "paired"
    assert from_jobs.variant("krpo group_size=4").initial_mean == pytest.approx(0.3)
    service.engine.dispose()


X8 = [0.52, 0.55, 0.49, 0.58, 0.61, 0.47, 0.56, 0.60]
Y8 = [0.45, 0.50, 0.44, 0.49, 0.52, 0.43, 0.47, 0.46]


def test_verdicts_read_better_worse_equivalent_or_undecided_with_their_tests() -> None:
    better = analyze(
        _records("krpo", X8, list(range(8))) + _records("grpo", Y8, list(range(10, 18))), AnalysisSettings()
    )
    [c] = better.comparisons
    assert c.verdict == "better" and c.family_size == 1 and c.p_holm == pytest.approx(c.p_value)
    assert c.sentence == (
        f"krpo beats grpo by {abs(c.difference.estimate) * 100:.1f} points (unpaired, Welch, 8 seeds: "
        f"95 % CI [{c.difference.low * 100:+.1f}, {c.difference.high * 100:+.1f}]; "
        f"p {c.p_value:.3g}, Holm over 1 comparison)"
    )
    worse = analyze(
        _records("krpo", Y8, list(range(8))) + _records("grpo", X8, list(range(10, 18))), AnalysisSettings()
    )
    assert worse.comparisons[0].verdict == "worse" and " trails grpo by " in worse.comparisons[0].sentence

    close = [v + d for v, d in zip(GRPO * 3, [0.001, -0.002, 0.0015, -0.001, 0.002, 0.0005, -0.0015, 0.001, 0.0])]
    equivalent = analyze(
        _records("krpo", close, list(range(9))) + _records("grpo", GRPO * 3, list(range(9))), AnalysisSettings()
    )
    [e] = equivalent.comparisons
    expected = stats.tost(close, GRPO * 3, 0.02, paired=True)
    assert e.verdict == "equivalent" and e.tost_p == pytest.approx(expected.p_value) and e.tost_p < 0.05
    assert (e.tost_interval.low, e.tost_interval.high) == pytest.approx((expected.interval.low, expected.interval.high))
    assert e.sentence.startswith("krpo is equivalent to grpo within ±2.0 points (paired by seed, 9 seeds: ")
    assert "90 % CI [" in e.sentence and e.seeds_to_decide is None

    [u] = analyze(
        _records("krpo", KRPO, [0, 1, 2]) + _records("grpo", [0.52, 0.40, 0.47], [0, 1, 2]), AnalysisSettings()
    ).comparisons
    assert u.verdict == "undecided" and u.seeds_to_decide is not None and u.seeds_to_decide > 3
    assert u.sentence.startswith("undecided between krpo and grpo: ")
    assert f"about {u.seeds_to_decide} seeds would decide it" in u.sentence
    assert "no detectable difference" not in u.sentence and "matches" not in u.sentence


def test_the_family_is_holm_adjusted_and_secondary_endpoints_are_exploratory() -> None:
    records = _records("grpo", Y8, list(range(8)))
    for i, shift in enumerate((0.0, 0.01, 0.03, 0.08)):
        records += [
            TrialRecord(
                f"v{i}",
                (),
                f"v{i}",
                s,
                {"final/accuracy": y + shift + 0.01 * ((s * (i + 3)) % 3 - 1), "final/pass_at_k": y + shift},
            )
            for s, y in enumerate(Y8)
        ]
    records = [
        r
        if r.variant != "grpo"
        else TrialRecord(r.variant, (), r.label, r.seed, r.metrics | {"final/pass_at_k": r.metrics["final/accuracy"]})
        for r in records
    ]
    analysis = analyze(records, AnalysisSettings())
    raw = [c.p_value for c in analysis.comparisons]
    assert [c.p_holm for c in analysis.comparisons] == pytest.approx(list(stats.holm(raw)))
    assert [c.tost_p_holm for c in analysis.comparisons] == pytest.approx(
        list(stats.holm([c.tost_p for c in analysis.comparisons]))
    )
    assert all(c.family_size == 4 and not c.exploratory for c in analysis.comparisons)
    assert [c.metric for c in analysis.secondary] == ["final/pass_at_k"] * 4
    assert all(c.exploratory and c.family_size == 0 and math.isnan(c.p_holm) for c in analysis.secondary)
    assert all(c.sentence.startswith("exploratory (final/pass_at_k): ") for c in analysis.secondary)
    json.dumps(analysis.to_json())  # NaN as null throughout


def test_an_interval_over_items_as_well_as_seeds_where_trials_stored_their_outcomes() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    difficulty = rng.uniform(0.2, 0.9, 200)

    def arm(variant: str, shift: float) -> list[TrialRecord]:
        out = []
        for seed in range(5):
            outcomes = tuple(int(v) for v in rng.random(200) < np.clip(difficulty + shift + rng.normal(0, 0.02), 0, 1))
            out.append(TrialRecord(variant, (), variant, seed, {"final/accuracy": sum(outcomes) / 200}, outcomes))
        return out

    [c] = analyze(arm("krpo", 0.02) + arm("grpo", 0.0), AnalysisSettings()).comparisons
    assert c.item_difference.estimate == pytest.approx(c.difference.estimate)
    assert c.item_difference.high - c.item_difference.low > c.difference.high - c.difference.low
    assert 0 < c.item_share < 1
    [no_items] = analyze(
        _records("krpo", KRPO, [0, 1, 2]) + _records("grpo", GRPO, [0, 1, 2]), AnalysisSettings()
    ).comparisons
    assert math.isnan(no_items.item_difference.estimate) and math.isnan(no_items.item_share)


def test_the_reward_curve_and_the_seed_spread_are_exploratory_endpoints_with_verdicts() -> None:
    auc = {"krpo": [0.61, 0.66, 0.63, 0.70, 0.65], "grpo": [0.55, 0.57, 0.58, 0.62, 0.56]}
    finals = {"krpo": [0.80, 0.81, 0.80, 0.81, 0.80], "grpo": [0.70, 0.90, 0.75, 0.85, 0.80]}
    records = [
        TrialRecord(v, (), v, s, {"final/accuracy": finals[v][s], "final/train_reward_auc": auc[v][s]})
        for v in ("grpo", "krpo")
        for s in range(5)
    ]
    analysis = analyze(records, AnalysisSettings())
    [curve] = analysis.secondary
    expected = stats.compare(auc["krpo"], auc["grpo"], "krpo", "grpo", list(range(5)), list(range(5)))
    assert curve.metric == "final/train_reward_auc" and curve.exploratory and curve.verdict == "better"
    assert curve.difference.estimate == pytest.approx(expected.difference.estimate)
    [primary] = analysis.comparisons
    ratio = stats.spread_ratio(finals["krpo"], finals["grpo"], paired=True)
    assert primary.spread_ratio.estimate == pytest.approx(ratio.estimate) and ratio.high < 1
    assert primary.stability == "more stable"
