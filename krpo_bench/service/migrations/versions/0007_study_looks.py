"""Studies record their sequential looks (``analysis.until_decided``: what each look decided) and the
study a confirmation re-runs (``krpo-bench confirm``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("looks", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("studies", sa.Column("confirms", sa.String(length=36), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE studies DROP COLUMN confirms")  # SQLite >= 3.35 and PostgreSQL; no table rebuild
    op.execute("ALTER TABLE studies DROP COLUMN looks")
