"""Studies record their owner (the id of the API token that submitted them), and jobs get the indexes
a fair claim needs: each study's next queued job, and each study's latest claim, found without
scanning the queue.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("owner", sa.String(length=255), nullable=True))
    op.create_index("ix_jobs_study_queue", "jobs", ["study_id", "status", sa.text("priority DESC"), "seq"])
    op.create_index("ix_jobs_study_started", "jobs", ["study_id", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_study_started", table_name="jobs")
    op.drop_index("ix_jobs_study_queue", table_name="jobs")
    op.execute("ALTER TABLE studies DROP COLUMN owner")  # SQLite >= 3.35 and PostgreSQL; no table rebuild
