"""Initial schema: jobs, architectures, trials, measurements, artifacts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", TZ),
        sa.Column("strategy_state", sa.JSON),
        sa.Column("snapshot_told", sa.Integer, nullable=False),
        sa.Column("snapshot_asked", sa.Integer, nullable=False),
        sa.Column("elapsed_s", sa.Float, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "architectures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("space", sa.String(64), nullable=False),
        sa.Column("key", sa.String(1000), nullable=False),
        sa.Column("arch", sa.JSON, nullable=False),
        sa.Column("params", sa.BigInteger),
        sa.Column("flops", sa.BigInteger),
        sa.UniqueConstraint("space", "key", name="uq_architectures_space_key"),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("architecture_id", sa.Integer, sa.ForeignKey("architectures.id"),
                  nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("metrics", sa.JSON),
        sa.Column("score", sa.Float),
        sa.Column("objectives", sa.JSON),
        sa.Column("feasible", sa.Boolean),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("job_id", "number", name="uq_trials_job_number"),
        sa.UniqueConstraint("job_id", "architecture_id", name="uq_trials_job_architecture"),
    )
    op.create_index("ix_trials_job_status_score", "trials",
                    ["job_id", "status", "score", "number", "architecture_id"])
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("architecture_id", sa.Integer, sa.ForeignKey("architectures.id"),
                  nullable=False),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_rank", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("architecture_id", "device", "metric", "source",
                            name="uq_measurements_arch_device_metric_source"),
    )
    op.create_index("ix_measurements_lookup", "measurements",
                    ["architecture_id", "device", "metric", "source_rank", "value"])
    op.create_index("ix_measurements_device_value", "measurements",
                    ["device", "metric", "value", "architecture_id"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_artifacts_job_id", "artifacts", ["job_id"])


def downgrade() -> None:
    for table in ("artifacts", "measurements", "trials", "architectures", "jobs"):
        op.drop_table(table)
