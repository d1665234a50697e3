"""Studies may be probes (``kind: probe``, one job that runs a gradient-quality probe).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op
from sqlalchemy.engine import Connection

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = re.compile(r"CONSTRAINT ck_studies_kind CHECK \(kind IN \([^)]*\)\)")


def _kinds(*kinds: str) -> None:
    check = "kind IN (" + ", ".join(f"'{k}'" for k in kinds) + ")"
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _sqlite_check(bind, check)
        return
    op.drop_constraint(op.f("ck_studies_kind"), "studies", type_="check")
    op.create_check_constraint(op.f("ck_studies_kind"), "studies", check)


def _sqlite_check(bind: Connection, check: str) -> None:
    """SQLite cannot alter a CHECK constraint, and rebuilding the table (alembic's batch mode) would
    cascade-delete its jobs: foreign keys are on in the migration's transaction. SQLite's documented
    procedure for changing constraints that the stored rows satisfy edits the stored schema instead
    (https://www.sqlite.org/lang_altertable.html#otheralter)."""
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'studies'").scalar_one()
    changed = CHECK.sub(f"CONSTRAINT ck_studies_kind CHECK ({check})", sql)
    if changed == sql and check not in sql:
        raise RuntimeError(f"studies: no ck_studies_kind constraint to change in {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'studies'", (changed,))
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _kinds("ablation", "search", "probe")


def downgrade() -> None:
    probes = "SELECT id FROM studies WHERE kind = 'probe'"  # removed: the old schema cannot hold them
    op.execute(f"DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM jobs WHERE study_id IN ({probes}))")
    op.execute(f"DELETE FROM jobs WHERE study_id IN ({probes})")
    op.execute("DELETE FROM studies WHERE kind = 'probe'")
    _kinds("ablation", "search")
