"""Partial queue indexes: ``ix_jobs_claim`` covers only queued jobs (priority first, then FIFO) and
``ix_jobs_lease`` only running ones, so running and ended jobs' entries are not in a claim's or a
lease reclaim's scan, and no plan reads the queued jobs through the lease index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _only(status: str) -> dict[str, sa.TextClause]:
    where = sa.text(f"status = '{status}'")
    return {"postgresql_where": where, "sqlite_where": where}


def upgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", [sa.text("priority DESC"), "seq"], **_only("queued"))
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.create_index("ix_jobs_lease", "jobs", ["lease_expires_at"], **_only("running"))


def downgrade() -> None:
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.create_index("ix_jobs_lease", "jobs", ["status", "lease_expires_at"])
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", sa.text("priority DESC"), "seq"])
