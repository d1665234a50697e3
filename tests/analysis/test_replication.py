"""Replication as a product feature: `confirm` (a linked study on fresh seeds, its analysis alone,
pooled and the heterogeneity between the two) and `compare` (trials of identical configs pooled
across studies), through the service, the CLI and the API; trials finish through the queue's public
API with made-up accuracies (no training)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.auth import TokenStore
from krpo_bench.api.settings import ApiSettings
from scipy import stats as scipy_stats
from sqlalchemy import select
from typer.testing import CliRunner

from krpo_bench.analysis.analyze import AnalysisSettings, analyze
from krpo_bench.analysis.records import TrialRecord, records_from_jobs
from krpo_bench.analysis.replication import SeedEstimate, heterogeneity_test, seed_estimate
from krpo_bench.cli import app as cli
from krpo_bench.service.db import Study, read_connection
from krpo_bench.service.quotas import owner_of
from krpo_bench.service.replication import compare, confirmed_study, replication
from krpo_bench.service.studies import StudyError, StudyService
from krpo_bench.spec.confirm import confirmation_name
from krpo_bench.spec.names import MAX_NAME_CHARS
from krpo_bench.spec.study import StudySpec
from tests.trial_specs import tiny_trial

BASE = {k: v for k, v in tiny_trial(steps=5).items() if k != "name"}
ABLATION = {
    "name": "lead",
    "kind": "ablation",
    "base": BASE,
    "seeds": 4,
    "variants": {
        "grpo": {"estimator": {"name": "grpo"}},
        "krpo": {"estimator": {"name": "krpo"}},
        "rloo": {"estimator": {"name": "rloo"}},
    },
}
SEQUENTIAL = ABLATION | {"analysis": {"until_decided": {"max_seeds": 8, "step": 2}}}


def accuracy(estimator: str, seed: int, effect: float) -> float:
    """A made-up final accuracy: a seed effect shared by the estimators, ``effect`` for krpo, noise."""
    shared = 0.40 + 0.02 * ((seed * 7) % 5)
    if estimator == "krpo":
        return shared + effect + 0.01 * ((seed * 3) % 4 - 1.5)
    return shared + (0.005 * ((seed * 5) % 3 - 1) if estimator == "rloo" else 0.0)


def finish(service: StudyService, effect: float) -> list[int]:
    """Complete every queued job as a worker would, with `accuracy` of its estimator; the seeds finished."""
    seeds = []
    while (job := service.queue.claim("test-worker", 60)) is not None:
        seed = job.config["seed"]
        estimator = job.config["trial"]["estimator"]["name"]
        result = {"status": "succeeded", "final_accuracy": accuracy(estimator, seed, effect), "initial_accuracy": 0.3}
        assert service.queue.complete(job.id, job.attempt, result)
        service.job_finished(job.id)
        seeds.append(seed)
    return seeds


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[StudyService]:
    service = StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield service
    service.engine.dispose()  # no PostgreSQL connection left for the garbage collector


def test_a_confirmation_reruns_the_chosen_variants_and_the_reference_on_fresh_seeds(service: StudyService) -> None:
    original = service.submit(SEQUENTIAL)
    used = finish(service, effect=0.04)
    confirmation = service.confirm("lead", variants=["krpo"], seeds=3)
    spec = confirmation.spec
    assert confirmation.name == "lead confirm" and list(spec["variants"]) == ["grpo", "krpo"]
    first = max(7, *used) + 1  # above the seeds run and those the sequential design may still add (0-7)
    assert spec["seeds"] == [first, first + 1, first + 2] and spec["analysis"]["until_decided"] is None
    assert confirmation.total == 6 and spec["base"] == original.spec["base"]
    with read_connection(service.engine) as conn:
        assert conn.execute(select(Study.confirms).where(Study.id == confirmation.id)).scalar_one() == original.id
    assert confirmed_study(service, confirmation.id) == original.id and confirmed_study(service, original.id) is None

    confirmed = finish(service, effect=0.01)
    assert set(confirmed) == set(spec["seeds"]) and not set(confirmed) & set(used)
    again = service.confirm(original.id)  # every variant, as many seeds as the first look
    assert list(again.spec["variants"]) == ["grpo", "krpo", "rloo"]
    assert again.spec["seeds"] == list(
        range(max(confirmed) + 1, max(confirmed) + 5)
    )  # above the earlier confirmation's


def test_what_cannot_be_confirmed_is_refused_with_the_reason(service: StudyService) -> None:
    service.submit(ABLATION)
    with pytest.raises(StudyError, match="no variant 'ppo'.*its variants: grpo, krpo, rloo"):
        service.confirm("lead", variants=["ppo"])
    with pytest.raises(StudyError, match="besides the reference 'grpo'"):
        service.confirm("lead", variants=["grpo"])
    search = service.submit(
        {
            "name": "s",
            "kind": "search",
            "base": BASE,
            "n_trials": 1,
            "parallelism": 1,
            "sampler": "random",
            "space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}},
        }
    )
    with pytest.raises(StudyError, match="only an ablation can be confirmed"):
        service.confirm(search.id)
    long_name = service.submit(ABLATION | {"name": "x" * MAX_NAME_CHARS})
    assert service.confirm(long_name.id).name == confirmation_name("x" * MAX_NAME_CHARS)
    assert len(confirmation_name("x" * MAX_NAME_CHARS)) == MAX_NAME_CHARS


def test_the_replication_is_the_confirmation_alone_pooled_and_their_heterogeneity(service: StudyService) -> None:
    original = service.submit(ABLATION)
    finish(service, effect=0.04)
    confirmation = service.confirm(original.id, variants=["krpo"], seeds=4)
    finish(service, effect=0.0)
    result = replication(service, confirmation.id)
    settings = AnalysisSettings.of_spec(StudySpec.model_validate(service.get(confirmation.id).spec))
    mine = records_from_jobs(service.jobs(confirmation.id))
    theirs = [r for r in records_from_jobs(service.jobs(original.id)) if r.variant in ("grpo", "krpo")]
    assert result.confirmation == analyze(mine, settings) == service.results(confirmation.id)
    assert result.pooled == analyze(theirs + mine, settings)
    assert result.original == service.results(original.id)
    pooled = result.pooled.comparison("krpo")
    assert pooled is not None and pooled.analysis == "paired" and pooled.n_variant == 8

    (row,) = result.heterogeneity
    assert row.label == "krpo" and row.reference_label == "grpo"
    by_hand = []
    for analysis in (result.original, result.confirmation):
        krpo, grpo = analysis.variant("krpo"), analysis.variant("grpo")
        assert krpo.seeds == grpo.seeds
        d = np.subtract(krpo.values, grpo.values)
        by_hand.append((d.mean(), d.std(ddof=1) / math.sqrt(d.size), d.size - 1))
    (d1, se1, df1), (d2, se2, df2) = by_hand
    weights = np.array([1 / se1**2, 1 / se2**2])
    mean = (weights * [d1, d2]).sum() / weights.sum()
    q = (weights * (np.array([d1, d2]) - mean) ** 2).sum()
    assert (row.original_difference, row.original_se) == pytest.approx((d1, se1), rel=1e-12)
    assert (row.confirmation_difference, row.confirmation_se) == pytest.approx((d2, se2), rel=1e-12)
    assert row.original_difference == pytest.approx(result.original.comparison("krpo").difference.estimate, rel=1e-12)
    assert row.q == pytest.approx(q, rel=1e-10)
    assert row.p_value == pytest.approx(scipy_stats.chi2.sf(q, 1), rel=1e-10)
    assert row.i_squared == pytest.approx(max(0.0, (q - 1) / q), rel=1e-10)
    welch_df = (se1**2 + se2**2) ** 2 / (se1**4 / df1 + se2**4 / df2)
    assert row.small_sample_p == pytest.approx(2 * scipy_stats.t.sf(math.sqrt(q), welch_df), rel=1e-10)
    assert row.p_value < 0.05 and row.small_sample_p > row.p_value  # 4 points vs 0: they differ; t is the wider
    with pytest.raises(StudyError, match="is no confirmation"):
        replication(service, original.id)


def test_heterogeneity_of_equal_estimates_is_none_and_undefined_errors_give_nan() -> None:
    same = heterogeneity_test(SeedEstimate(0.02, 0.01, 4), SeedEstimate(0.02, 0.02, 4))
    assert (same.q, same.p_value, same.i_squared, same.small_sample_p) == (0.0, 1.0, 0.0, 1.0)
    apart = heterogeneity_test(SeedEstimate(0.05, 0.01, 9), SeedEstimate(-0.05, 0.01, 9))
    assert apart.q == pytest.approx(50.0) and apart.i_squared == pytest.approx(0.98)
    undefined = heterogeneity_test(SeedEstimate(0.05, math.nan, math.nan), SeedEstimate(0.0, 0.01, 4))
    assert all(math.isnan(v) for v in (undefined.q, undefined.p_value, undefined.i_squared, undefined.small_sample_p))


def test_compare_pools_identical_configs_and_keeps_distinct_ones_apart(tmp_path: Path) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    two = {
        "name": "first",
        "kind": "ablation",
        "base": BASE,
        "seeds": [0, 1, 2],
        "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
    }
    first = service.submit(two)
    finish(service, effect=0.04)
    # the same configs under other variant names and seeds 1..4 (1 and 2 repeat), and krpo with another Q
    second = service.submit(
        two
        | {
            "name": "second",
            "seeds": [1, 2, 3, 4],
            "variants": {
                "baseline": {"estimator": {"name": "grpo"}},
                "kalman": {"estimator": {"name": "krpo"}},
                "krpo": {"estimator": {"name": "krpo", "Q": 0.5}},
            },
        }
    )
    finish(service, effect=0.04)
    pooled = compare(service, [first.id, second.id])
    labels = [v.label for v in pooled.variants]
    assert labels == ["grpo", "krpo", f"krpo ({second.id[:8]})"]
    assert pooled.variant("grpo").seeds == [0, 1, 2, 3, 4] and pooled.variant("krpo").seeds == [0, 1, 2, 3, 4]
    assert pooled.variant(f"krpo ({second.id[:8]})").seeds == [1, 2, 3, 4]
    krpo = pooled.comparison("krpo")
    assert krpo is not None and krpo.analysis == "paired" and krpo.n_variant == 5
    assert pooled.variant("krpo").values == [accuracy("krpo", s, 0.04) for s in range(5)]
    assert pooled.comparison(f"krpo ({second.id[:8]})").analysis == "unpaired"  # seeds 1-4 against 0-4

    result = CliRunner().invoke(
        cli, ["compare", "first", "second", "--db", service.db_url, "--mlflow", service.mlflow_uri]
    )
    assert result.exit_code == 0, result.output
    assert "pooled 14 finished trials of 2 studies" in result.output and f"krpo ({second.id[:8]})" in result.output


def test_status_of_a_confirmation_names_its_original_and_prints_the_replication(tmp_path: Path) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    original = service.submit(ABLATION)
    finish(service, effect=0.04)
    options = ["--db", service.db_url, "--mlflow", service.mlflow_uri]
    submitted = CliRunner().invoke(
        cli, ["confirm", "lead", "--variants", "krpo", "--seeds", "3", "--submit-only", *options]
    )
    assert submitted.exit_code == 0, submitted.output
    assert f"confirms study {original.id} 'lead' on fresh seeds" in submitted.output
    finish(service, effect=0.0)
    result = CliRunner().invoke(cli, ["status", "lead confirm", *options])
    assert result.exit_code == 0, result.output
    assert f"confirms study {original.id} 'lead' on fresh seeds" in result.output
    assert f"pooled with the original study {original.id}" in result.output and "heterogeneity" in result.output
    refused = CliRunner().invoke(cli, ["confirm", "lead", "--variants", "nope", "--submit-only", *options])
    assert refused.exit_code == 2 and "no variant 'nope'" in refused.output


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
        list_cache_s=0,
    )
    with TestClient(create_app(settings), base_url="http://localhost") as test_client:
        yield test_client


def test_the_api_confirms_and_answers_the_replication(client: TestClient) -> None:
    service: StudyService = client.app.state.service
    spec: dict[str, Any] = copy.deepcopy(ABLATION)
    created = client.post("/api/v1/studies", json=spec)
    assert created.status_code == 201, created.text
    finish(service, effect=0.04)
    assert client.post("/api/v1/studies/lead/confirm", json={"variants": ["nope"]}).status_code == 409
    assert client.post("/api/v1/studies/lead/confirm", json={"seeds": 1}).status_code == 422
    assert client.get(f"/api/v1/studies/{created.json()['id']}/replication").status_code == 409

    confirmed = client.post("/api/v1/studies/lead/confirm", json={"variants": ["krpo"], "seeds": 3})
    assert confirmed.status_code == 201, confirmed.text
    body = confirmed.json()
    assert confirmed.headers["location"] == f"/api/v1/studies/{body['id']}"
    assert body["name"] == "lead confirm" and body["total"] == 6 and body["spec"]["seeds"] == [4, 5, 6]
    finish(service, effect=0.0)
    answer = client.get(f"/api/v1/studies/{body['id']}/replication")
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["original_id"] == created.json()["id"] and data["confirmation_id"] == body["id"]
    assert data == replication(service, body["id"]).model_dump(mode="json")
    assert [row["label"] for row in data["heterogeneity"]] == ["krpo"] and 0 <= data["heterogeneity"][0]["p_value"] <= 1


def test_confirming_over_the_api_takes_a_submit_token_and_its_quota(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    (reader, _), (submitter, record) = store.create("reader", ["read"]), store.create("submitter", ["submit"])
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
        max_active_trials_per_token=5,
    )
    with TestClient(create_app(settings)) as client:
        service: StudyService = client.app.state.service
        original = service.submit(ABLATION)  # owned by nobody: any submit token may confirm it, owning the confirmation
        finish(service, effect=0.04)
        path = f"/api/v1/studies/{original.id}/confirm"
        assert client.post(path, json={"variants": ["krpo"]}).status_code == 401
        assert (
            client.post(path, json={"variants": ["krpo"]}, headers={"Authorization": f"Bearer {reader}"}).status_code
            == 403
        )
        as_submitter = {"Authorization": f"Bearer {submitter}"}
        over = client.post(path, json={"variants": ["krpo"], "seeds": 3}, headers=as_submitter)  # 6 trials, 5 allowed
        assert over.status_code == 429, over.text
        confirmed = client.post(path, json={"variants": ["krpo"], "seeds": 2}, headers=as_submitter)
        assert confirmed.status_code == 201, confirmed.text
        assert owner_of(service.rows, confirmed.json()["id"]) == record.id
        assert confirmed.json()["spec"]["seeds"] == [4, 5]  # the refused request took no seeds
        answer = client.get(
            f"/api/v1/studies/{confirmed.json()['id']}/replication", headers={"Authorization": f"Bearer {reader}"}
        )
        (row,) = answer.json()["heterogeneity"]
        assert answer.status_code == 200 and row["original_difference"] is not None
        assert row["confirmation_difference"] is None and row["p_value"] is None  # nothing finished yet: null, not NaN


def test_an_unpaired_comparison_gets_welchs_standard_error_and_df() -> None:
    x, y = [0.50, 0.55, 0.47, 0.52], [0.41, 0.46, 0.40]
    records = [TrialRecord("krpo", (), "krpo", s, {"final/accuracy": v}) for s, v in zip([0, 1, 2, 3], x)]
    records += [TrialRecord("grpo", (), "grpo", s, {"final/accuracy": v}) for s, v in zip([0, 1, 2], y)]
    analysis = analyze(records, AnalysisSettings(reference="grpo"))
    compared = analysis.comparison("krpo")
    assert compared is not None and compared.analysis == "unpaired"
    estimate = seed_estimate(analysis, compared)
    vx, vy = np.var(x, ddof=1) / 4, np.var(y, ddof=1) / 3
    assert estimate.difference == pytest.approx(np.mean(x) - np.mean(y), rel=1e-12)
    assert estimate.se == pytest.approx(math.sqrt(vx + vy), rel=1e-12)
    assert estimate.df == pytest.approx((vx + vy) ** 2 / (vx**2 / 3 + vy**2 / 2), rel=1e-12)
    assert estimate.difference == pytest.approx(compared.difference.estimate, rel=1e-12)
