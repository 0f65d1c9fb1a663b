"""MySQL/MariaDB: every table in utf8mb4 with a binary, no-pad collation

MySQL's default collations compare case- and accent-insensitively ('Key' = 'key' = 'kéy')
and MariaDB's ignore trailing spaces, so a task key, name or worker id could match another
one there and not on SQLite or PostgreSQL. A binary collation compares the bytes, as they do.
A no-op on SQLite and PostgreSQL. A later migration that creates a table on MySQL must give
it the same collation (`fs.mysql_binary_collation`).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import flowd.store.schema as fs

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    collation = fs.mysql_binary_collation(bind.dialect)
    if collation is None:
        return
    # the tables that exist at this revision (the metadata also has tables later revisions create)
    existing = set(sa.inspect(bind).get_table_names())
    for table in fs.metadata.sorted_tables:
        if table.name in existing:
            op.execute(f"ALTER TABLE {table.name} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")


def downgrade() -> None:
    bind = op.get_bind()
    if fs.mysql_binary_collation(bind.dialect) is None:
        return
    for table in fs.metadata.sorted_tables:
        op.execute(f"ALTER TABLE {table.name} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
