"""Predicted measurements name the model that made them.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.add_column(sa.Column("model_version", sa.String(100)))


def downgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.drop_column("model_version")
