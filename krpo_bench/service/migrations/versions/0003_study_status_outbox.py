"""Studies store their status and expected job count, and an MLflow outbox marker.

- ``total_jobs``: the jobs a study will hold when complete, so the queue can settle the stored
  status (succeeded / failed) in the transaction that ends its last job; filled for existing rows
  from their spec (a spec that no longer validates: the jobs it has).
- ``status`` of existing running studies whose jobs are all done is settled here, as reads used to
  derive it; ``(status, created_at)`` is indexed so listing by status is one indexed query.
- ``mlflow_pending``: the MLflow experiment and parent run are created after the submission commits;
  existing rows already have theirs (pending only where the parent run id is missing).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = ("queued", "running")


def _total_jobs(spec: dict, jobs: int) -> int:
    from pydantic import ValidationError

    from krpo_bench.spec.study import StudySpec

    try:
        return max(StudySpec.model_validate(spec).trial_count(), jobs)
    except (ValidationError, ValueError, TypeError):
        return jobs


def upgrade() -> None:
    op.add_column("studies", sa.Column("total_jobs", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("studies", sa.Column("mlflow_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_studies_status_created", "studies", ["status", "created_at"])
    op.create_index("ix_studies_mlflow_pending", "studies", ["mlflow_pending"])

    studies = sa.table(
        "studies",
        sa.column("id", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("status", sa.String),
        sa.column("total_jobs", sa.Integer),
        sa.column("mlflow_pending", sa.Boolean),
        sa.column("mlflow_parent_run_id", sa.String),
    )
    jobs = sa.table("jobs", sa.column("study_id", sa.String), sa.column("status", sa.String))
    conn = op.get_bind()
    counts = dict(conn.execute(sa.select(jobs.c.study_id, sa.func.count()).group_by(jobs.c.study_id)).tuples().all())
    for study_id, spec in conn.execute(sa.select(studies.c.id, studies.c.spec)).tuples().all():
        total = _total_jobs(spec or {}, counts.get(study_id, 0))
        conn.execute(sa.update(studies).where(studies.c.id == study_id).values(total_jobs=total))

    of_study = jobs.c.study_id == studies.c.id
    job_count = sa.select(sa.func.count()).where(of_study).scalar_subquery()
    conn.execute(
        sa.update(studies)
        .where(
            studies.c.status == "running",
            ~sa.exists().where(of_study, jobs.c.status.in_(ACTIVE)),
            job_count >= studies.c.total_jobs,
            job_count > 0,
        )
        .values(status=sa.case((sa.exists().where(of_study, jobs.c.status == "failed"), "failed"), else_="succeeded"))
    )
    conn.execute(sa.update(studies).where(studies.c.mlflow_parent_run_id.is_(None)).values(mlflow_pending=True))


def downgrade() -> None:
    op.drop_index("ix_studies_mlflow_pending", "studies")
    op.drop_index("ix_studies_status_created", "studies")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("mlflow_pending")
        batch.drop_column("total_jobs")
