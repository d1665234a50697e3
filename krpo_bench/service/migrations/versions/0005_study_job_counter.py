"""Ending a job costs the same whatever its study's size; studies with a cancelled job are not succeeded.

- ``studies.enqueued_jobs``: the jobs a study holds, kept by the queue as it inserts them (filled
  here from the existing rows), so settling a study compares it with ``total_jobs`` instead of
  counting the study's jobs.
- "Is any job of this study still active?" (and "did one fail / was one cancelled?") is an index
  probe on the ``(study_id, status)`` prefix of ``ix_jobs_study_queue`` (revision 0006).
- Studies stored as succeeded although one of their jobs failed or was cancelled (stored so by
  earlier releases) get the status the queue now gives them: failed, else cancelled.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("enqueued_jobs", sa.Integer(), nullable=False, server_default="0"))

    studies = sa.table(
        "studies", sa.column("id", sa.String), sa.column("status", sa.String), sa.column("enqueued_jobs", sa.Integer)
    )
    jobs = sa.table("jobs", sa.column("study_id", sa.String), sa.column("status", sa.String))
    of_study = jobs.c.study_id == studies.c.id
    conn = op.get_bind()
    conn.execute(sa.update(studies).values(enqueued_jobs=sa.select(sa.func.count()).where(of_study).scalar_subquery()))
    failed = sa.exists().where(of_study, jobs.c.status == "failed")
    cancelled = sa.exists().where(of_study, jobs.c.status == "cancelled")
    conn.execute(
        sa.update(studies)
        .where(studies.c.status == "succeeded", sa.or_(failed, cancelled))
        .values(status=sa.case((failed, "failed"), else_="cancelled"))
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE studies DROP COLUMN enqueued_jobs"
    )  # SQLite >= 3.35 and PostgreSQL; a batch rebuild would cascade-delete jobs
