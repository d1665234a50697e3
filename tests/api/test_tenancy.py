"""Issue 19, item 11: tenants. A study records the token that submitted it; a submit token controls its
own studies and no other's; per-token quotas on queued work; claims alternate between owners within a
priority, at the cost of index probes, not a queue scan; a probe's and a trial's work is bounded and a
spec without a timeout gets the server's. Against the real app and a real queue, on SQLite and
PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.auth import TokenStore
from krpo_bench.api.settings import ApiSettings
from sqlalchemy import event, text

from krpo_bench.service.db import make_engine, upgrade
from krpo_bench.service.queue import JobQueue, NewJob
from krpo_bench.service.quotas import owner_of
from tests.api.test_api import SEARCH
from tests.probe.test_probe import PROBE
from tests.trial_specs import tiny_ablation

MINUTE = {"timeout_s": 60}


def ablation(name: str, seeds: int, **resources: Any) -> dict[str, Any]:
    """A tiny ablation of ``seeds`` trials, one minute each unless ``resources`` say otherwise."""
    return {**tiny_ablation(name, seeds=seeds), "resources": resources or MINUTE}


class Tenants:
    """The app with two submit tokens (alice, bob) and an admin; ``post`` sends as one of them."""

    def __init__(self, client: TestClient, tokens: dict[str, str], ids: dict[str, str]) -> None:
        self.client, self.tokens, self.ids = client, tokens, ids
        self.queue: JobQueue = client.app.state.service.queue

    def post(self, who: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.client.post(f"/api/v1{path}", json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"})

    def submit(self, who: str, body: dict[str, Any]) -> str:
        response = self.post(who, "/studies", body)
        assert response.status_code == 201, response.text
        return response.json()["id"]


@pytest.fixture
def tenants(db_url: str, tmp_path: Path) -> Iterator[Tenants]:
    store = TokenStore(tmp_path / "tokens.json")
    made = {
        name: store.create(name, [scope])
        for name, scope in (("alice", "submit"), ("bob", "submit"), ("admin", "admin"))
    }
    (tmp_path / "data").mkdir()
    settings = ApiSettings(
        db=db_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path / "data",),
        list_cache_s=0,
        default_timeout_s=600,
        max_active_trials_per_token=1004,
        max_trial_hours_per_token=1000,
    )
    with TestClient(create_app(settings)) as client:
        yield Tenants(
            client, {n: token for n, (token, _) in made.items()}, {n: record.id for n, (_, record) in made.items()}
        )


def test_claims_alternate_between_owners_when_one_floods_the_queue(tenants: Tenants) -> None:
    flood = tenants.submit("alice", ablation("flood", 1000))
    small = tenants.submit("bob", ablation("small", 4))
    rows = tenants.queue.study_rows
    assert (owner_of(rows, flood), owner_of(rows, small)) == (tenants.ids["alice"], tenants.ids["bob"]), (
        "the token's id, not its secret"
    )
    owner = {flood: "alice", small: "bob"}

    serial = []  # one worker, one job at a time: nobody holds a job when it claims the next
    for _ in range(4):
        job = tenants.queue.claim("serial", 60)
        serial.append(owner[job.study_id])
        assert tenants.queue.complete(job.id, job.attempt, {"final_accuracy": 0.5})
    parallel = [owner[tenants.queue.claim(f"slot-{i}", 60).study_id] for i in range(4)]  # jobs held as it claims
    assert serial == ["alice", "bob", "alice", "bob"] and parallel == ["alice", "bob", "alice", "bob"]
    assert owner[tenants.queue.claim("slot-4", 60).study_id] == "alice", "bob's four are taken: the flood goes on"


def test_a_submit_token_controls_its_own_studies_and_no_others(tenants: Tenants) -> None:
    study = tenants.submit("alice", ablation("mine", 2))
    search = tenants.submit("alice", {**SEARCH, "resources": MINUTE})
    for action, target, body in (("cancel", study, None), ("resume", study, None), ("extend", search, {"n_trials": 1})):
        refused = tenants.post("bob", f"/studies/{target}/{action}", body)
        assert refused.status_code == 403 and "another token" in refused.json()["message"], refused.text
    assert tenants.post("bob", "/studies/mine/cancel").status_code == 403, "by name too"
    assert (
        tenants.client.get(
            f"/api/v1/studies/{study}", headers={"Authorization": f"Bearer {tenants.tokens['bob']}"}
        ).json()["status"]
        == "running"
    )

    cancelled = tenants.post("alice", f"/studies/{study}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    resumed = tenants.post("alice", f"/studies/{study}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running", resumed.text
    extended = tenants.post("alice", f"/studies/{search}/extend", {"n_trials": 1})
    assert extended.status_code == 200 and extended.json()["total"] == 3, extended.text
    assert tenants.post("admin", f"/studies/{study}/cancel").json()["status"] == "cancelled", (
        "an admin controls any study"
    )


def test_quotas_refuse_what_a_token_may_not_queue_naming_the_setting(tenants: Tenants) -> None:
    flood = tenants.submit("alice", ablation("flood", 1000))
    over = tenants.post("alice", "/studies", ablation("more", 5))
    assert over.status_code == 429 and "KRPO_BENCH_MAX_ACTIVE_TRIALS_PER_TOKEN" in over.json()["message"], over.text
    assert "1,000 queued or running" in over.json()["message"]
    tenants.submit("bob", ablation("bobs", 5))  # quotas are per token
    tenants.submit("admin", ablation("admins", 5))  # and admins have none

    assert tenants.post("alice", f"/studies/{flood}/cancel").status_code == 200, "a cancelled study frees its share"
    tenants.submit("alice", ablation("more", 5))
    resumed = tenants.post("alice", f"/studies/{flood}/resume")
    assert resumed.status_code == 429 and "KRPO_BENCH_MAX_ACTIVE_TRIALS_PER_TOKEN" in resumed.text, (
        "no way around by resuming"
    )

    month = ablation("month", 2, timeout_s=30 * 24 * 3600)
    hours = tenants.post("bob", "/studies", month)
    assert hours.status_code == 429 and "KRPO_BENCH_MAX_TRIAL_HOURS_PER_TOKEN" in hours.json()["message"], hours.text
    tenants.submit("admin", month)


def test_a_spec_without_a_timeout_gets_the_servers(tenants: Tenants) -> None:
    trials = tenants.submit("alice", tiny_ablation("no-timeout"))
    probe = tenants.submit("alice", {**PROBE, "name": "probe"})
    timed = tenants.submit("alice", ablation("timed", 1))
    timeouts = {study: [j.timeout_s for j in tenants.queue.list_jobs(study)] for study in (trials, probe, timed)}
    assert timeouts == {trials: [600], probe: [600], timed: [60]}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({**PROBE, "batches": 10_000}, "batches"),
        ({**PROBE, "reference": {"prompts": 100_000, "group_size": 256}}, "reference.prompts"),
        ({**PROBE, "max_completion_length": 32_768}, "max_completion_length"),
        ({**PROBE, "batches": 1000, "prompts_per_batch": 1000}, ""),  # 4 million rollouts
        ({**PROBE, "batches": 100, "prompts_per_batch": 64, "max_completion_length": 8192}, ""),  # 4e8 tokens
        (tiny_ablation("long", training={"max_steps": 1_000_000}), "base.training.max_steps"),
    ],
)
def test_a_probes_and_a_trials_work_is_bounded(tenants: Tenants, body: dict[str, Any], path: str) -> None:
    response = tenants.post("alice", "/studies", body)
    assert response.status_code == 422, response.text
    assert path in [e["path"] for e in response.json()["errors"]], response.text


def _claim_plan(queue: JobQueue) -> list[str]:
    """The plan of the claim statement a real ``claim`` sends (PostgreSQL: executed, then rolled back)."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("WITH", "UPDATE")) and not sent:
            sent.append((statement, parameters))

    event.listen(queue.engine, "before_cursor_execute", capture)
    try:
        assert queue.claim("explained", 60) is not None
    finally:
        event.remove(queue.engine, "before_cursor_execute", capture)
    [(statement, parameters)] = sent
    pg = queue.engine.dialect.name == "postgresql"
    with queue.engine.connect() as conn, conn.begin() as txn:
        explain = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if pg else "EXPLAIN QUERY PLAN "
        rows = conn.exec_driver_sql(explain + statement, parameters).all()
        txn.rollback()
    return [row[0] if pg else row[-1] for row in rows]


def test_a_claim_probes_indexes_and_never_scans_a_queue_of_10000_jobs(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    queue = JobQueue(engine)
    ids = {}
    for owner, size in [("alice", 1000)] * 10 + [("bob", 2)]:
        study_id = str(uuid.uuid4())
        queue.create_study(
            {"id": study_id, "name": owner, "kind": "ablation", "spec": {}, "owner": owner, "mlflow_pending": False},
            [NewJob(f"t{k}", {"k": k}) for k in range(size)],
        )
        ids[study_id] = owner
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    assert [ids[queue.claim(f"w{i}", 60).study_id] for i in range(3)] == ["alice", "bob", "alice"]
    plan = _claim_plan(queue)
    joined = "\n".join(plan)
    if engine.dialect.name == "postgresql":
        assert "Seq Scan on jobs" not in joined, joined
        removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", joined)]
        assert max(removed, default=0) < 50, joined  # bob's next job is found without walking alice's 10,000
    else:
        # the one scan allowed: the partial index of queued jobs (ix_jobs_claim), read in claim order and
        # stopped by the first-come window's LIMIT
        scans = [line for line in plan if re.match(r"SCAN (jobs|nxt|run|last)\b", line)]
        assert scans in ([], ["SCAN jobs USING INDEX ix_jobs_claim"]), joined
    engine.dispose()
