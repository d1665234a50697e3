"""End-to-end: a real MLflow store on SQLite -> load_study -> build_report."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import scipy.stats
from krpo_bench.dashboards import StudyData, build_report, load_study, render_html
from krpo_bench.dashboards.report import order_twins
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from krpo_bench import stats
from krpo_bench.analysis.analyze import METRIC, AnalysisSettings
from krpo_bench.analysis.model import json_ready

STUDY_ID = "study-7"
FINAL = {
    "grpo": [0.40, 0.43, 0.41],
    "krpo": [0.49, 0.53, 0.50],
    "krpo shuffled": [0.47, 0.45, 0.50],
}
STEP_TIME = {"grpo": 0.10, "krpo": 0.11, "krpo shuffled": 0.11}
STEPS = range(0, 41, 5)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _log_trial(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    variant: str,
    seed: int,
    status: str = "FINISHED",
    study_id: str = STUDY_ID,
    label: str | None = None,
) -> str:
    """One trial run with ``variant``'s numbers, tagged as the variant ``label`` (default: ``variant``)."""
    label = label or variant
    run = client.create_run(experiment_id, run_name=f"{label}-{seed}")
    run_id = run.info.run_id
    estimator = "kalman" if variant.startswith("krpo") else "group_mean"
    tags = {
        "mlflow.parentRunId": parent_id,
        "krpo.study_id": study_id,
        "krpo.study_name": "quickstart",
        "krpo.variant": label,
        "krpo.seed": str(seed),
        "krpo.estimator": estimator,
        "krpo.trial_key": f"{label}/{seed}",
        "krpo.kind": "ablation",
    }
    params = {
        "estimator.name": estimator,
        "estimator.Q": "0.0001",
        "estimator.R": "1.0",
        "estimator.shuffle_order": str(variant.endswith("shuffled")),
        "training.group_size": "8",
        "training.seed": str(seed),
        "model.name": "tiny-arith",
        "training.output_dir": f"/out/{run_id}",
    }
    final = FINAL[variant][seed]
    now = int(time.time() * 1000)
    metrics = []
    for step in STEPS:
        progress = step / STEPS[-1]
        metrics += [
            Metric("train/reward", 0.3 + (final - 0.3) * progress + 0.01 * seed, now + step, step),
            Metric("train/completion_length", 12 - 4 * progress, now + step, step),
            Metric("adv/std", 0.9 - 0.1 * progress, now + step, step),
        ]
        if step % 10 == 0:
            metrics.append(Metric("eval/accuracy", 0.35 + (final - 0.35) * progress, now + step, step))
    metrics.append(Metric("eval/accuracy", 0.0, now - 1, 0))  # an older value at step 0: superseded
    metrics += [
        Metric("final/accuracy", final, now, STEPS[-1]),
        Metric("cost/wall_time_s", 30.0 + seed, now, 0),
        Metric("cost/gpu_seconds", 0.0, now, 0),
        Metric("cost/tokens", 1000.0 * (seed + 1), now, 0),
        Metric("cost/mean_step_time_s", STEP_TIME[variant], now, 0),
    ]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    if variant == "krpo" and seed == 0:
        client.log_dict(run_id, {"values": np.linspace(-2, 2, 101).tolist()}, "diagnostics/advantages.json")
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def make_store(root: Path) -> str:
    """A tracking store with one study: 3 variants x 3 seeds, plus one failed and one running trial."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("quickstart", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"krpo.study_id": STUDY_ID}, run_name="study")
    for variant in FINAL:
        for seed in range(3):
            _log_trial(client, experiment_id, parent.info.run_id, variant, seed)
    _log_trial(client, experiment_id, parent.info.run_id, "grpo", 0, status="FAILED")
    _log_trial(client, experiment_id, parent.info.run_id, "krpo", 1, status="RUNNING")
    other = client.create_experiment("other", artifact_location=(root / "other").as_uri())
    client.set_terminated(client.create_run(other, tags={"krpo.study_id": "x", "krpo.variant": "grpo"}).info.run_id)
    return uri


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def study(tracking_uri: str):
    return load_study(tracking_uri, study_id=STUDY_ID)


@pytest.fixture(scope="module")
def search_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        q = trial.suggest_float("estimator.Q", 1e-6, 1e-2, log=True)
        r = trial.suggest_float("estimator.R", 0.1, 10.0, log=True)
        g = trial.suggest_categorical("training.group_size", [4, 8, 16])
        return float(np.log10(q) / 10 + np.log10(r) / 20 + g / 100)

    study.optimize(objective, n_trials=8)
    return study


@pytest.fixture(scope="module")
def report(study, search_study, tmp_path_factory: pytest.TempPathFactory):
    return build_report(study, tmp_path_factory.mktemp("report"), optuna_study=search_study)


def test_load_study_reads_finished_trials_and_counts_the_rest(study) -> None:
    assert len(study.runs) == 9
    assert study.status_counts == {"FINISHED": 9, "FAILED": 1, "RUNNING": 1}
    assert study.study_name == "quickstart"
    assert set(study.variants) == set(FINAL)
    krpo = study.runs_of("krpo")
    assert [r.seed for r in krpo] == [0, 1, 2]
    assert [r.final["final/accuracy"] for r in krpo] == FINAL["krpo"]
    eval_acc = krpo[0].histories["eval/accuracy"]
    assert list(eval_acc.index) == [0, 10, 20, 30, 40]
    assert eval_acc.loc[0] == pytest.approx(0.35)
    assert krpo[0].advantages is not None and len(krpo[0].advantages) == 101
    assert all(r.advantages is None for r in study.runs if r is not krpo[0])
    frame = study.frame()
    assert len(frame) == 9 and {"final/accuracy", "params.estimator.Q"} <= set(frame.columns)


def test_load_study_by_experiment_name(tracking_uri: str) -> None:
    by_name = load_study(tracking_uri, experiment="quickstart", advantages=False)
    assert len(by_name.runs) == 9 and by_name.study_id == STUDY_ID


def test_order_twin_is_the_unshuffled_variant(study) -> None:
    assert order_twins(study) == [("krpo shuffled", "krpo")]


def test_report_files_and_self_contained_html(report) -> None:
    html = report.html_path.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert "<link" not in html
    assert "Plotly" in html and "http-equiv" not in html
    for variant in FINAL:
        assert f"<td>{variant}</td>" in html
    for section in ("Curves", "Final table", "Cost", "KRPO diagnostics", "Search"):
        assert f"<h2>{section}</h2>" in html
    assert "estimator.Q x estimator.R" in html and "training.group_size" in html
    names = sorted(p.name for p in report.figures)
    assert names == ["eval_accuracy_curves.png", "final_accuracy.png", "train_reward_curves.png"]
    for path in report.figures:
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000


def test_summary_matches_direct_statistics(report) -> None:
    grpo, krpo = np.array(FINAL["grpo"]), np.array(FINAL["krpo"])
    seeds = [0, 1, 2]
    expected = stats.compare(krpo, grpo, "krpo", "grpo", seeds, seeds)
    mean, iqm = stats.mean_ci(krpo), stats.iqm_ci(krpo)
    assert expected.analysis == "paired"
    sentence = report.summary.analysis.comparison("krpo").sentence
    assert sentence.startswith("krpo beats grpo by 9.3 points (paired by seed, 3 seeds: 95 % CI [+")
    page = report.html_path.read_text()
    assert html.escape(sentence) in page and "paired by seed" in page and "detectable, points" in page
    assert "Holm p" in page and "TOST p (Holm)" in page and "seeds + test items" in page

    saved = json.loads(report.json_path.read_text())
    row = next(r for r in saved["variants"] if r["variant"] == "krpo")
    assert row["values"] == FINAL["krpo"] and row["seeds"] == [0, 1, 2]
    assert (row["mean"]["estimate"], row["mean"]["low"], row["mean"]["high"]) == pytest.approx(
        (mean.estimate, mean.low, mean.high)
    )
    assert (row["iqm"]["estimate"], row["iqm"]["low"], row["iqm"]["high"]) == pytest.approx(
        (iqm.estimate, iqm.low, iqm.high)
    )
    compared = next(c for c in saved["comparisons"] if c["variant"] == "krpo")
    assert compared["difference"] == pytest.approx(
        {"estimate": expected.difference.estimate, "low": expected.difference.low, "high": expected.difference.high}
    )
    assert compared["prob_improvement"]["estimate"] == pytest.approx(expected.prob_improvement.estimate)
    assert compared["prob_improvement"]["low"] == pytest.approx(expected.prob_improvement.low)
    assert compared["welch_p"] == pytest.approx(scipy.stats.ttest_ind(krpo, grpo, equal_var=False).pvalue)
    assert compared["p_value"] == pytest.approx(scipy.stats.ttest_rel(krpo, grpo).pvalue)
    assert compared["analysis"] == "paired" and compared["target_effect"] == 0.02
    assert (compared["welch_difference"]["low"], compared["welch_difference"]["high"]) == pytest.approx(
        (expected.welch_difference.low, expected.welch_difference.high)
    )
    assert compared["mde"] == pytest.approx(expected.mde) and compared["seeds_needed"] == expected.seeds_needed
    assert compared["sentence"] == sentence and compared["reference"] == "grpo" and compared["verdict"] == "better"
    family = saved["comparisons"]
    assert compared["family_size"] == len(family) == 2  # krpo and krpo shuffled, each against grpo
    assert [c["p_holm"] for c in family] == pytest.approx(list(stats.holm([c["p_value"] for c in family])))
    assert saved["variants"][0]["variant"] == "grpo" and all(c["variant"] != "grpo" for c in saved["comparisons"])
    assert saved["study"]["status_counts"]["FAILED"] == 1

    cost = {c["variant"]: c for c in saved["cost"]}
    assert cost["krpo"]["step_time_ratio"] == pytest.approx(1.1)
    assert cost["krpo"]["cost/tokens"] == pytest.approx(2000.0)
    order = saved["order_checks"][0]
    assert order["exploratory"] and order["sentence"].startswith("exploratory (final/accuracy): ")
    assert order["p_value"] == pytest.approx(
        stats.compare(FINAL["krpo shuffled"], krpo, "krpo shuffled", "krpo", seeds, seeds).p_value
    )

    table = pd.read_csv(report.csv_path).set_index("variant")
    assert table.loc["krpo", "mean"] == pytest.approx(mean.estimate)
    assert table.loc["krpo", "difference_high"] == pytest.approx(expected.difference.high)
    assert table.loc["krpo", "values"] == "0.49;0.53;0.5"
    assert table.loc["krpo", "analysis"] == "paired"
    assert table.loc["krpo", "welch_difference_low"] == pytest.approx(expected.welch_difference.low)
    assert np.isnan(table.loc["grpo", "difference"])


def test_seed_sets_that_differ_are_compared_unpaired(study, tmp_path: Path) -> None:
    runs = [r for r in study.runs if not (r.variant == "krpo" and r.seed == 2)]
    partial = StudyData("s", None, ["0"], runs, {"FINISHED": len(runs)})
    analysis = build_report(partial, tmp_path / "partial", AnalysisSettings(target_effect=0.05)).summary.analysis
    krpo = analysis.comparison("krpo")
    assert krpo is not None and krpo.analysis == "unpaired" and (krpo.n_variant, krpo.n_reference) == (2, 3)
    assert "(unpaired, Welch, 2 and 3 seeds" in krpo.sentence
    shuffled = analysis.comparison("krpo shuffled")
    assert shuffled is not None and shuffled.analysis == "paired"


def test_render_html_refresh_and_missing_reference(study) -> None:
    page = render_html(study, AnalysisSettings(reference="sft"), refresh_seconds=15)
    assert '<meta http-equiv="refresh" content="15">' in page
    assert "reference variant &#x27;sft&#x27; has no finished runs" in page


def test_search_view_with_one_trial_skips_importances(study, tmp_path: Path) -> None:
    single = optuna.create_study()
    single.optimize(lambda t: t.suggest_float("estimator.Q", 0.0, 1.0), n_trials=1)
    page = render_html(study, optuna_study=single)
    assert "needs at least two complete trials" in page


def test_empty_and_single_seed_studies_still_render(study, tmp_path: Path) -> None:
    empty = build_report(StudyData("s", None, ["0"], [], {"RUNNING": 2}), tmp_path / "empty")
    assert empty.summary.analysis.variants == [] and empty.html_path.exists()
    assert pd.read_csv(empty.csv_path).empty
    single = StudyData("s", None, ["0"], [study.runs_of("grpo")[0], study.runs_of("krpo")[0]], {"FINISHED": 2})
    row = build_report(single, tmp_path / "single").summary.analysis.rows()[1]
    assert row["sentence"].startswith("cannot tell krpo from grpo: only one seed")
    saved = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert saved["comparisons"][0]["difference"]["low"] is None


def test_service_results_api_and_cli_carry_the_paired_comparison(tmp_path: Path) -> None:
    """The service's results (which the API and `krpo-bench status` show) compare like the report does."""
    from krpo_bench.api.schemas import StudyResults
    from typer.testing import CliRunner

    from krpo_bench.cli import app
    from krpo_bench.service.studies import StudyService
    from tests.trial_specs import tiny_trial

    db, mlflow = f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    service = StudyService(db, mlflow)
    base = {k: v for k, v in tiny_trial(steps=5).items() if k != "name"}
    info = service.submit(
        {
            "name": "paired",
            "kind": "ablation",
            "base": base,
            "seeds": 3,
            "analysis": {"target_effect": 0.05},
            "variants": {"krpo": {"estimator": {"name": "krpo"}}, "grpo": {"estimator": {"name": "grpo"}}},
        }
    )
    accuracy = {"grpo": FINAL["grpo"], "krpo": FINAL["krpo"]}
    while (job := service.queue.claim("test-worker", 60)) is not None:
        value = accuracy[job.config["variant"]][job.config["seed"]]
        assert service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": value})
        service.job_finished(job.id)
    results = service.results(info.id)
    assert results.comparison("grpo") is None and results.variant("krpo").seeds == [0, 1, 2]
    expected = stats.compare(FINAL["krpo"], FINAL["grpo"], "krpo", "grpo", [0, 1, 2], [0, 1, 2], 0.05)
    assert _statistics(results.comparison("krpo")) == _statistics(expected)
    sentence = results.comparison("krpo").sentence

    api = StudyResults.of(info.id, results).model_dump(mode="json")
    krpo = next(c for c in api["comparisons"] if c["variant"] == "krpo")
    assert krpo["analysis"] == "paired" and krpo["sentence"] == sentence and api["study_id"] == info.id
    assert (
        krpo["welch_difference"]["low"] == pytest.approx(expected.welch_difference.low)
        and krpo["target_effect"] == 0.05
    )

    shown = CliRunner().invoke(app, ["status", info.id, "--db", db, "--mlflow", mlflow], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert sentence in " ".join(shown.output.split())
    assert "seeds for 5 pts" in shown.output and "paired" in shown.output


def _statistics(comparison: Any) -> dict[str, Any]:
    """A comparison's statistics (a `stats.Comparison` or an analysis `ComparisonResult`), NaN as None."""
    values = {
        name: getattr(comparison, name)
        for name in (
            "analysis",
            "n_variant",
            "n_reference",
            "p_value",
            "rank_p_value",
            "welch_p",
            "mde",
            "target_effect",
            "seeds_needed",
            "confidence",
        )
    }
    for name in ("difference", "difference_bootstrap", "prob_improvement", "welch_difference"):
        interval = getattr(comparison, name)
        values |= {f"{name}.{part}": getattr(interval, part) for part in ("estimate", "low", "high")}
    return json_ready(values)


def _grpo_last_study(tmp_path: Path):
    """A service and an ablation whose variants list "filter" (krpo) before grpo, 3 seeds each, not yet
    run; "filter" also sorts before "grpo"."""
    from krpo_bench.service.studies import StudyService
    from tests.trial_specs import tiny_trial

    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = {k: v for k, v in tiny_trial(steps=5).items() if k != "name"}
    info = service.submit(
        {
            "name": "grpo-last",
            "kind": "ablation",
            "base": base,
            "seeds": 3,
            "variants": {"filter": {"estimator": {"name": "krpo"}}, "grpo": {"estimator": {"name": "grpo"}}},
        }
    )
    return service, info


def test_service_results_pair_the_arms_by_seed_whatever_order_their_jobs_come_in(tmp_path: Path) -> None:
    """The arms' jobs succeed in different seed orders (grpo 0, 1, 2; filter 2, 0, 1): the comparison
    pairs seed with seed, read in queue order or in the order the jobs finished."""
    service, info = _grpo_last_study(tmp_path)
    claimed = {(j.config["variant"], j.config["seed"]): j for j in iter(lambda: service.queue.claim("w", 60), None)}
    finished = [("grpo", 0), ("grpo", 1), ("grpo", 2), ("filter", 2), ("filter", 0), ("filter", 1)]
    numbers = {"grpo": FINAL["grpo"], "filter": FINAL["krpo"]}
    for variant, seed in finished:
        job = claimed[(variant, seed)]
        assert service.queue.complete(
            job.id, job.attempt, {"status": "succeeded", "final_accuracy": numbers[variant][seed]}
        )
        service.job_finished(job.id)
    by_id = {j.id: j for j in service.jobs(info.id)}
    in_finish_order = [by_id[claimed[key].id] for key in finished]
    expected = stats.compare(FINAL["krpo"], FINAL["grpo"], "filter", "grpo", [0, 1, 2], [0, 1, 2])
    for results in (service.results(info.id), service.results(info.id, in_finish_order)):
        assert results.comparison("grpo") is None
        comparison = results.comparison("filter")
        assert comparison is not None and comparison.analysis == "paired"
        assert _statistics(comparison) == _statistics(expected)


def test_the_report_and_the_dashboard_compare_with_grpo_wherever_it_is_listed(tmp_path: Path) -> None:
    """grpo is the reference though the spec lists "filter" first and the report reads it first."""
    from krpo_bench.dashboards.study import report_study, study_dashboard_html

    service, info = _grpo_last_study(tmp_path)
    records = service.ensure_mlflow(info.id)
    client = MlflowClient(service.mlflow_uri)
    for variant, label in (("krpo", "filter"), ("grpo", "grpo")):
        for seed in range(3):
            _log_trial(
                client, records.experiment_id, records.parent_run_id, variant, seed, study_id=info.id, label=label
            )
    data = load_study(service.mlflow_uri, study_id=info.id)
    assert data.variants == ["filter", "grpo"]
    expected = stats.compare(FINAL["krpo"], FINAL["grpo"], "filter", "grpo", [0, 1, 2], [0, 1, 2])
    summary = json.loads((report_study(service, info.id, tmp_path / "report").parent / "summary.json").read_text())
    assert summary["reference"] == "grpo" and summary["reference_found"]
    compared = {c["variant"]: c for c in summary["comparisons"]}
    assert set(compared) == {"filter"} and compared["filter"]["reference"] == "grpo"
    assert compared["filter"]["difference"]["estimate"] == pytest.approx(expected.difference.estimate)
    page = study_dashboard_html(service, info.id)
    assert "Δ vs grpo" in page and "Δ vs filter" not in page


def test_api_refuses_a_bad_target_effect_naming_the_field(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from krpo_bench.api.app import create_app
    from krpo_bench.api.settings import ApiSettings

    from tests.trial_specs import tiny_trial

    base = {k: v for k, v in tiny_trial(steps=5).items() if k != "name"}
    spec = {"name": "t", "kind": "ablation", "base": base, "variants": {"grpo": {"estimator": {"name": "grpo"}}}}
    (tmp_path / "data").mkdir()
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path / "data",),
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for bad, rule in ((0, "greater_than"), (1.5, "less_than_equal"), ("2 points", "float_type")):
            response = client.post("/api/v1/studies", json={**spec, "analysis": {"target_effect": bad}})
            assert response.status_code == 422, response.text
            found = {e["path"]: e for e in response.json()["errors"]}
            assert found["analysis.target_effect"]["value"] == bad and found["analysis.target_effect"]["type"] == rule


def test_a_grid_study_compares_each_cell_with_the_reference_at_the_same_point(study, tmp_path: Path) -> None:
    """In a study with a grid the variants are labelled per grid point; each is compared with grpo at
    its own point (not with a 'grpo' that does not exist, which left such reports without comparisons)."""
    import dataclasses

    points = {" group_size=2 reward_noise=None": 0.0, " group_size=2 reward_noise={'flip': 0.2}": -0.1}
    runs = [
        dataclasses.replace(r, variant=r.variant + point, final={**r.final, METRIC: r.final[METRIC] + shift})
        for r in study.runs
        if r.variant in ("grpo", "krpo")
        for point, shift in points.items()
    ]
    grid = StudyData("s", None, ["0"], runs, {"FINISHED": len(runs)})
    summary = build_report(grid, tmp_path / "grid").summary
    assert summary.analysis.reference_found
    for point in points:
        assert summary.analysis.comparison("grpo" + point) is None
        expected = stats.compare(FINAL["krpo"], FINAL["grpo"], "krpo" + point, "grpo" + point, [0, 1, 2], [0, 1, 2])
        compared = summary.analysis.comparison("krpo" + point)
        assert compared is not None and compared.reference_label == "grpo" + point and compared.reference == "grpo"
        assert compared.difference.estimate == pytest.approx(expected.difference.estimate)
    cost = {row["variant"]: row["step_time_ratio"] for row in summary.cost}
    assert cost["grpo group_size=2 reward_noise=None"] == pytest.approx(1.0)


def test_service_results_of_a_grid_study_pair_each_cell_with_grpo_at_that_point(tmp_path: Path) -> None:
    from krpo_bench.service.studies import StudyService
    from tests.trial_specs import tiny_trial

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
    while (job := service.queue.claim("test-worker", 60)) is not None:
        variant = job.config["variant"]
        value = FINAL[variant.split()[0]][job.config["seed"]] + (0.2 if "group_size=4" in variant else 0.0)
        assert service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": value})
    results = service.results(info.id)
    assert {v.label for v in results.variants} == {
        "grpo group_size=2",
        "grpo group_size=4",
        "krpo group_size=2",
        "krpo group_size=4",
    }
    for g in (2, 4):
        assert results.comparison(f"grpo group_size={g}") is None
        comparison = results.comparison(f"krpo group_size={g}")
        assert comparison is not None and comparison.analysis == "paired"
        assert (comparison.reference, comparison.reference_grid_point) == ("grpo", (("training.group_size", g),))
        assert comparison.reference_label == f"grpo group_size={g}" and comparison.grid_point == (
            ("training.group_size", g),
        )
        assert comparison.difference.estimate == pytest.approx(np.mean(FINAL["krpo"]) - np.mean(FINAL["grpo"]))
    service.engine.dispose()


def test_grid_labels_split_and_grid_figures_get_one_panel_per_point(study, tmp_path: Path) -> None:
    """A grid study's PNGs are one panel per grid point with the variants inside (on one axis, 30
    labels like "krpo_persistent group_size=2 reward_noise={'flip': 0.2}" overlapped into a 5,280-px strip)."""
    import dataclasses

    from matplotlib.image import imread

    from krpo_bench.spec.study import split_label

    assert split_label("krpo_prior group_size=2 reward_noise={'flip': 0.2}") == (
        "krpo_prior",
        "group_size=2 reward_noise={'flip': 0.2}",
    )
    assert split_label("krpo shuffled") == ("krpo shuffled", "")
    points = [f"group_size={g} reward_noise={n}" for g in (2, 4, 8) for n in ("None", "{'flip': 0.2}")]
    runs = [dataclasses.replace(r, variant=f"{r.variant} {point}") for r in study.runs for point in points]
    report = build_report(StudyData("s", None, ["0"], runs, {"FINISHED": len(runs)}), tmp_path / "grid")
    flat = build_report(study, tmp_path / "flat")
    for name in ("final_accuracy.png", "eval_accuracy_curves.png"):
        height, width = imread(tmp_path / "grid" / "figures" / name).shape[:2]
        flat_height = imread(tmp_path / "flat" / "figures" / name).shape[0]
        assert width < 2500 and height > 1.3 * flat_height, (name, width, height)  # 3 panels a row, 2 rows
    assert report.summary.analysis.reference_found and flat.summary.analysis.reference_found


def test_grid_plotly_figures_get_one_panel_per_point_and_one_legend_entry_per_variant(study) -> None:
    import dataclasses

    from krpo_bench.dashboards import figures
    from krpo_bench.dashboards.curves import aggregate_curve

    points = [f"group_size={g} reward_noise={n}" for g in (2, 4, 8) for n in ("None", "{'flip': 0.2}")]
    runs = {
        f"{v} {p}": [dataclasses.replace(r, variant=f"{v} {p}") for r in study.runs_of(v)]
        for v in ("grpo", "krpo")
        for p in points
    }
    values = {label: np.array([r.final[METRIC] for r in rs]) for label, rs in runs.items()}
    means = {label: stats.mean_ci(v) for label, v in values.items()}
    colors = figures.palette(list(values))
    identity = {f"{v} {p}": (v, p) for v in ("grpo", "krpo") for p in points}
    final = figures.final_figure(values, means, colors, METRIC, identity)
    assert sum(1 for key in final.layout.to_plotly_json() if key.startswith("xaxis")) == 6
    assert sorted(t.name for t in final.data if t.showlegend is not False) == ["grpo", "krpo"]
    assert {t.marker.color for t in final.data if t.legendgroup == "krpo"} == {figures.PALETTE[1]}, (
        "one colour per variant"
    )
    curves = {
        label: aggregate_curve({r.seed: r.histories["eval/accuracy"] for r in rs}, n_resamples=50)
        for label, rs in runs.items()
    }
    curve = figures.curve_figure(curves, "eval/accuracy", colors, identity)
    assert sum(1 for key in curve.layout.to_plotly_json() if key.startswith("xaxis")) == 6
    assert sorted(t.name for t in curve.data if t.showlegend is not False and t.mode == "lines" and t.fill is None) == [
        "grpo",
        "krpo",
    ]
    flat = figures.final_figure(
        {"grpo": values[f"grpo {points[0]}"]}, {"grpo": means[f"grpo {points[0]}"]}, {"grpo": "#000000"}, METRIC
    )
    assert flat.layout.yaxis.title.text == METRIC and [t.name for t in flat.data if t.showlegend is not False] == [
        "grpo"
    ]
