"""Every evaluation scores each test item: outcomes in test-set order whose mean is the accuracy,
an item hash that identifies the test set, carried by the trial result, MLflow and the job row."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from mlflow import MlflowClient

from api.schemas import JobSummary
from krpo_bench.models import load_model
from krpo_bench.service.queue import JobQueue
from krpo_bench.service.studies import StudyService
from krpo_bench.spec.study import validate_study
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tags import ITEM_OUTCOMES_ARTIFACT
from krpo_bench.tasks import build_task
from krpo_bench.training.distributed import contiguous_share, place_share
from krpo_bench.training.evaluation import evaluate, item_ids_hash, outcome_string
from krpo_bench.training.trial import run_trial
from tests.trial_specs import TINY_TASK, tiny_trial

LARGEST_TEST_SIZE = 100_000  # TaskBase.test_size's cap


def decoded(outcomes: str) -> list[int]:
    return [int(c) for c in outcomes]


@pytest.mark.parametrize("size", [1, 7, 64, 65, 200])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_contiguous_shares_are_datasets_shards_and_gather_in_order(size: int, world_size: int) -> None:
    test = datasets.Dataset.from_dict({"i": list(range(size))})
    values = [i % 3 % 2 for i in range(size)]
    gathered = [0.0] * size
    for rank in range(world_size):
        share = contiguous_share(size, world_size, rank)
        if size >= world_size:  # datasets refuses more shards than rows; a rank past the last row gets none here
            assert list(share) == test.shard(num_shards=world_size, index=rank, contiguous=True)["i"]
        placed = place_share([values[i] for i in share], share, size)
        gathered = [a + b for a, b in zip(gathered, placed)]
    assert gathered == values


def test_item_hash_depends_on_items_and_their_order_only() -> None:
    first = build_task(TINY_TASK).test
    again = build_task(dict(TINY_TASK)).test
    other_seed = build_task({**TINY_TASK, "seed": 1}).test
    same = item_ids_hash(first["prompt"], first["answer"])
    assert same == item_ids_hash(again["prompt"], again["answer"]), "same task config and data seed, same items"
    assert same != item_ids_hash(other_seed["prompt"], other_seed["answer"])
    assert same != item_ids_hash(first["prompt"][::-1], first["answer"][::-1])
    assert same != item_ids_hash(first["prompt"], first["answer"][:-1] + ["-1"])
    assert outcome_string([1, 0, 0, 1]) == "1001"


@pytest.mark.slow
def test_evaluate_scores_each_item_in_test_set_order() -> None:
    spec = TrialSpec.model_validate(tiny_trial())
    loaded = load_model(spec.model)
    task = build_task(spec.task)
    t = spec.training
    kwargs = {
        "max_new_tokens": t.max_completion_length,
        "k": t.pass_at_k,
        "temperature": t.temperature,
        "batch_size": 64,
        "seed": 0,
    }
    result = evaluate(loaded.model, loaded.tokenizer, task, **kwargs)
    assert len(result.item_outcomes) == len(result.item_pass_at_k) == result.num_prompts == len(task.test) == 64
    assert set(result.item_outcomes) | set(result.item_pass_at_k) <= {0, 1}
    assert 0 < sum(result.item_outcomes) < 64, "a mix of right and wrong items, or the order checks below prove nothing"
    assert sum(result.item_outcomes) / len(result.item_outcomes) == result.accuracy
    assert sum(result.item_pass_at_k) / len(result.item_pass_at_k) == result.pass_at_k
    assert result.item_ids_hash == item_ids_hash(task.test["prompt"], task.test["answer"])

    reversed_task = dataclasses.replace(task, test=task.test.select(range(63, -1, -1)))  # one batch: same padding
    backwards = evaluate(loaded.model, loaded.tokenizer, reversed_task, **{**kwargs, "k": 1})
    assert backwards.item_outcomes == result.item_outcomes[::-1]
    assert backwards.item_ids_hash != result.item_ids_hash

    first_ten = evaluate(loaded.model, loaded.tokenizer, task, limit=10, **kwargs)
    assert first_ten.item_outcomes == result.item_outcomes[:10]


@pytest.mark.slow
def test_a_trial_result_and_its_mlflow_run_carry_the_item_outcomes(tmp_path: Path) -> None:
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = TrialSpec.model_validate(tiny_trial(steps=2, eval_size=16))
    result = run_trial(spec, run_dir=tmp_path / "run", tracking_uri=mlflow_uri)
    test = build_task(spec.task).test
    final = decoded(result.final_item_outcomes)
    assert len(final) == len(test) and sum(final) / len(final) == result.final_accuracy
    assert result.final_item_ids_hash == item_ids_hash(test["prompt"], test["answer"])
    initial = decoded(result.initial_item_outcomes)
    assert len(initial) == 16 and sum(initial) / 16 == result.initial_accuracy
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["final_item_outcomes"] == result.final_item_outcomes
    assert run_trial(spec, run_dir=tmp_path / "run") == result, "a finished trial reads its outcomes back"

    artifact = MlflowClient(mlflow_uri).download_artifacts(result.mlflow_run_id, ITEM_OUTCOMES_ARTIFACT, str(tmp_path))
    logged = json.loads(Path(artifact).read_text())
    assert logged["final"]["outcomes"] == result.final_item_outcomes
    assert logged["final"]["item_ids_hash"] == result.final_item_ids_hash
    assert logged["final"]["num_items"] == len(test) and logged["final"]["k"] == spec.training.pass_at_k
    assert sum(decoded(logged["final"]["pass_at_k"])) / len(test) == result.final_pass_at_k
    assert logged["initial"]["outcomes"] == result.initial_item_outcomes


@pytest.mark.slow
def test_a_worker_stores_the_item_outcomes_in_the_job_row(tmp_path: Path) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = {k: v for k, v in tiny_trial(steps=1).items() if k != "name"}
    info = service.submit(
        validate_study(
            {"name": "items", "kind": "ablation", "base": base, "seeds": 2, "resources": {"max_attempts": 1}}
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "worker",
        "--gpus",
        "cpu",
        "--slots-per-gpu",
        "1",
        "--exit-when-idle",
        "--db",
        service.db_url,
        "--mlflow",
        service.mlflow_uri,
        "--heartbeat-s",
        "1",
    ]
    done = subprocess.run(
        cmd, env=dict(os.environ, KRPO_BENCH_CPU_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = service.jobs(info.id)
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.last_error for j in jobs]
    for job in jobs:
        outcomes = decoded(job.result["final_item_outcomes"])
        assert len(outcomes) == TINY_TASK["test_size"] and sum(outcomes) / len(outcomes) == job.result["final_accuracy"]
        assert JobSummary.of(job).result == job.result
    assert jobs[0].result["final_item_ids_hash"] == jobs[1].result["final_item_ids_hash"], (
        "the seeds vary training, not the test items"
    )


def test_the_jobs_table_keeps_the_outcomes_of_the_largest_test_set(queue: JobQueue, study_id: str) -> None:
    outcomes = outcome_string(i % 7 == 0 for i in range(LARGEST_TEST_SIZE))
    result = {
        "status": "succeeded",
        "final_accuracy": 0.5,
        "final_item_outcomes": outcomes,
        "final_item_ids_hash": "0123456789abcdef",
    }
    job_id = queue.enqueue(study_id, "t", {"variant": "grpo", "seed": 0})
    claimed = queue.claim("w", lease_s=30)
    assert queue.complete(job_id, claimed.attempt, result)
    stored = queue.get_job(job_id)
    assert stored.result == result
    assert JobSummary.of(stored).result["final_item_outcomes"] == outcomes
