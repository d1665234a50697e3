"""Seeds until decided: a sequential ablation's looks on SQLite and PostgreSQL, through the service
as workers drive it (claim, complete, job_finished), with results drawn per variant so each
comparison's fate is known: a clear winner is decided at the first look, an identical twin is
equivalent within the margin once its interval is tight enough, a noisy arm stays undecided to the
last look."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from krpo_bench.analysis.looks import look_design
from krpo_bench.service.studies import StudyService
from tests.service.test_service import BASE

STUDY = {
    "name": "decide",
    "kind": "ablation",
    "base": BASE,
    "variants": {
        "grpo": {"estimator": {"name": "grpo"}},
        "winner": {"estimator": {"name": "krpo"}},
        "twin": {"estimator": {"name": "rloo"}},
        "noisy": {"estimator": {"name": "dr_grpo"}},
    },
    "seeds": 4,
    "analysis": {"until_decided": {"max_seeds": 12, "step": 4}},
}
SHIFT = {"grpo": 0.0, "winner": 0.10, "twin": 0.0, "noisy": 0.0}
NOISE = {"grpo": 0.0, "winner": 0.002, "twin": 0.001, "noisy": 0.05}


def accuracy(variant: str, seed: int) -> float:
    """A seed's final accuracy: shared seed effect + the variant's shift + its own noise."""
    shared = np.random.default_rng(seed).normal(0.6, 0.03)
    own = np.random.default_rng([seed, list(SHIFT).index(variant)]).normal(0, 1)
    return float(shared + SHIFT[variant] + NOISE[variant] * own)


@pytest.fixture
def service(db_url, tmp_path) -> Iterator[StudyService]:
    service = StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield service
    service.engine.dispose()


def run_batch(service: StudyService) -> int:
    """Claim and complete every queued job as a worker would (no training); the service takes its looks."""
    done = 0
    while (job := service.queue.claim("test-worker", 60)) is not None:
        value = accuracy(job.config["variant_name"], job.config["seed"])
        assert service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": value})
        service.job_finished(job.id)
        done += 1
    return done


def test_seeds_are_added_to_undecided_comparisons_until_decided_or_the_last_look(service: StudyService) -> None:
    info = service.submit(STUDY)
    assert info.total == 4 * 12 and info.counts["queued"] == 16  # the most it may take; the first look's seeds queued
    batches = []
    while (done := run_batch(service)) > 0:
        batches.append(done)
    info = service.get(info.id)
    assert info.status == "succeeded" and info.counts == {**info.counts, "queued": 0, "running": 0}
    looks = info.looks
    assert [look["seeds"] for look in looks] == [4, 8, 12][: len(looks)]
    first = {d["label"]: d["verdict"] for d in looks[0]["decisions"]}
    assert first["winner"] == "better"  # decided at once, and never given more seeds
    final = {d["label"]: d["verdict"] for look in looks for d in look["decisions"]}
    assert final["noisy"] == "undecided" and len(looks) == 3  # open to the last look
    assert final["twin"] == "equivalent"
    seeds = {}
    for job in service.jobs(info.id):
        seeds.setdefault(job.config["variant"], set()).add(job.config["seed"])
    assert seeds["winner"] == set(range(4)) and seeds["noisy"] == set(range(12)) and seeds["grpo"] == set(range(12))
    assert info.total == sum(batches) == sum(len(s) for s in seeds.values())  # total shrank to what ran

    analysis = service.results(info.id)
    verdicts = {c.label: c for c in analysis.comparisons}
    assert (
        verdicts["winner"].look == 1 and verdicts["winner"].n_variant == 4 and verdicts["winner"].analysis == "paired"
    )
    assert (
        verdicts["noisy"].look == 3 and verdicts["noisy"].n_variant == 12 and verdicts["noisy"].verdict == "undecided"
    )
    levels = look_design(1, [4, 8, 12], 0.05, list(range(12)))
    assert verdicts["winner"].difference_level == pytest.approx(levels.difference_level)
    assert levels.difference_level < 0.05 / 10  # O'Brien-Fleming spends little alpha at the first look
    assert "look 1 at level" in verdicts["winner"].sentence
    assert analysis.looks == looks


def test_a_look_lost_to_a_crash_is_taken_again_and_asks_its_seeds_once(service: StudyService) -> None:
    info = service.submit(STUDY)
    while (job := service.queue.claim("test-worker", 60)) is not None:  # the batch ends, but no one took the look
        service.queue.complete(
            job.id,
            job.attempt,
            {"status": "succeeded", "final_accuracy": accuracy(job.config["variant_name"], job.config["seed"])},
        )
    assert service.get(info.id).status == "running" and service.get(info.id).looks is None
    first = service.take_look(info.id)
    assert first is not None and first["look"] == 1
    assert service.take_look(info.id) is None  # repeated: nothing new (the asked seeds are queued)
    job = service.queue.claim("test-worker", 60)  # one trial of the next batch ends: what is shown stays at look 1
    service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": 0.5})
    shown = service.results(info.id).comparisons
    assert all(c.look == 1 and c.n_variant == c.n_reference == 4 and c.analysis == "paired" for c in shown)
    queued = service.get(info.id).counts["queued"] + 1
    assert queued == 4 * len(
        {d["reference_label"] for d in first["decisions"] if d["verdict"] == "continue"}
    ) + 4 * sum(d["verdict"] == "continue" for d in first["decisions"])


def test_until_decided_is_checked_against_the_study() -> None:
    from krpo_bench.spec.loading import SpecError
    from krpo_bench.spec.study import validate_study

    with pytest.raises(SpecError, match="max_seeds"):
        validate_study(STUDY | {"analysis": {"until_decided": {"max_seeds": 4, "step": 2}}})
    with pytest.raises(SpecError, match="step"):
        validate_study(STUDY | {"analysis": {"until_decided": {"max_seeds": 8, "step": 0}}})
