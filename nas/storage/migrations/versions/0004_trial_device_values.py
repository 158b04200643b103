"""The preferred device value of every completed trial, for `best` under a budget; trials
indexed by architecture.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KEY = ["job_id", "device", "metric"]


def upgrade() -> None:
    op.create_index("ix_trials_architecture_id", "trials", ["architecture_id"])
    op.create_table(
        "trial_device_values",
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("device", sa.String(200), primary_key=True),
        sa.Column("metric", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("feasible", sa.Boolean),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_trial_device_values_score", "trial_device_values",
                    [*_KEY, sa.text("score DESC"), "number", "value", "feasible", "trial_id"])
    op.create_index("ix_trial_device_values_value", "trial_device_values",
                    [*_KEY, "value", "score", "number", "feasible", "trial_id"])
    from nas.storage._device_values import refresh_device_values

    refresh_device_values(op.get_bind())  # every existing trial


def downgrade() -> None:
    op.drop_index("ix_trial_device_values_value", table_name="trial_device_values")
    op.drop_index("ix_trial_device_values_score", table_name="trial_device_values")
    op.drop_table("trial_device_values")
    op.drop_index("ix_trials_architecture_id", table_name="trials")
