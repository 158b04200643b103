"""The database's own id (a random UUID, one row): artifact folders are keyed by it,
`$NAS_ARTIFACTS/<id>/job-N`, so job N of two databases never shares a checkpoint or a log.

Revision ID: 0006
Revises: 0005
"""

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "database_info",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_database_info_one_row"),
    )
    op.bulk_insert(table, [{"id": 1, "uuid": str(uuid.uuid4()),
                            "created_at": datetime.now(timezone.utc)}])


def downgrade() -> None:
    op.drop_table("database_info")
