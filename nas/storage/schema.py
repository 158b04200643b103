"""The relational schema (SQLAlchemy Core). Alembic migrations create and evolve it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

TRIAL_STATUSES = ("queued", "running", "completed", "failed", "pruned")
#: Preference when several sources give one (architecture, device, metric): lower wins.
SOURCE_RANK = {"measured": 0, "imported": 1, "benchmark": 2, "predicted": 3}

jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("seed", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("strategy_state", JSON),
    Column("snapshot_told", Integer, nullable=False, default=0),
    Column("snapshot_asked", Integer, nullable=False, default=0),
    Column("elapsed_s", Float, nullable=False, default=0.0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("note", Text),
    Column("error", Text),
    #: {sha256, modules: {module: sha256}} of the user code the job ran (workers.user_code);
    #: null for a job without user modules
    Column("code", JSON),
)

architectures = Table(
    "architectures", metadata,
    Column("id", Integer, primary_key=True),
    Column("space", String(64), nullable=False),
    Column("key", String(1000), nullable=False),
    Column("arch", JSON, nullable=False),
    Column("params", BigInteger),
    Column("flops", BigInteger),
    UniqueConstraint("space", "key", name="uq_architectures_space_key"),
)

trials = Table(
    "trials", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("architecture_id", Integer, ForeignKey("architectures.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("worker", String(200)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("metrics", JSON),
    Column("score", Float),
    Column("objectives", JSON),
    Column("feasible", Boolean),
    Column("error", Text),
    UniqueConstraint("job_id", "number", name="uq_trials_job_number"),
    UniqueConstraint("job_id", "architecture_id", name="uq_trials_job_architecture"),
    # covering for `best`: its walk down the score index reads no table rows
    Index("ix_trials_job_status_score", "job_id", "status", "score", "number",
          "architecture_id"),
    # a new measurement updates the device values of every trial of its architecture
    Index("ix_trials_architecture_id", "architecture_id"),
)

measurements = Table(
    "measurements", metadata,
    Column("id", Integer, primary_key=True),
    Column("architecture_id", Integer, ForeignKey("architectures.id"), nullable=False),
    Column("device", String(200), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("source", String(16), nullable=False),
    Column("source_rank", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the model that made a `predicted` value (kind and fingerprint of its training data)
    Column("model_version", String(100)),
    UniqueConstraint("architecture_id", "device", "metric", "source",
                     name="uq_measurements_arch_device_metric_source"),
    # the preferred measurement of an architecture (covering: `value` read from the index)
    Index("ix_measurements_lookup", "architecture_id", "device", "metric", "source_rank",
          "value"),
    # `best` under a device budget: the architectures within it, by an index-only range
    Index("ix_measurements_device_value", "device", "metric", "value", "architecture_id"),
)

#: The preferred device value (measured < imported < benchmark < predicted) of each completed,
#: scored trial, one row per (trial, device, metric) the trial's architecture has a value for.
#: A denormalised copy of `measurements` joined to `trials`, kept in step by `Storage` (on
#: results and on `measurements.put`), so that `best` under a device budget reads one index
#: instead of looking up the preferred measurement of every trial it passes.
trial_device_values = Table(
    "trial_device_values", metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("device", String(200), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("score", Float, nullable=False),
    Column("number", Integer, nullable=False),
    Column("feasible", Boolean),
    Column("value", Float, nullable=False),
    Column("source", String(16), nullable=False),
    # walk down the job's scores, reading each trial's value from the index (loose budgets)
    Index("ix_trial_device_values_score", "job_id", "device", "metric", text("score DESC"),
          "number", "value", "feasible", "trial_id"),
    # the range of values within a budget (tight budgets)
    Index("ix_trial_device_values_value", "job_id", "device", "metric", "value", "score",
          "number", "feasible", "trial_id"),
)

#: Trained weights (a torch state_dict) of the best trials of a job, so that `nas export`
#: hands over the trained model from any machine that reaches the database.
trial_weights = Table(
    "trial_weights", metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("format", String(32), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: Intermediate values a trial reported (`ctx.report(step, **metrics)` of the `function`
#: evaluator), stored with its result; a driver feeds them to the job's early-stopping
#: pruner at start, so a resumed job decides as the interrupted one did.
trial_reports = Table(
    "trial_reports", metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("value", Float, nullable=False),
)

artifacts = Table(
    "artifacts", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("kind", String(64), nullable=False),
    Column("path", String(1000), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


#: How far each phase of a job has come (`nas.storage._progress`): `pool` (proxy pool cells
#: scored), `supernet` (weight-sharing epochs), `trials` (trials told); written by the
#: driver, throttled, and read by any process. `started_at` and `start_done` are when and
#: where the current driver session took the phase up, so the rate (and the ETA) counts
#: this session's work only, not a pause between sessions.
job_progress = Table(
    "job_progress", metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("phase", String(32), primary_key=True),
    Column("done", Integer, nullable=False),
    Column("total", Integer),
    Column("detail", JSON),
    Column("start_done", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


#: The `nas serve` processes: each heartbeats its row every tick (alive = a heartbeat within
#: 3 x poll_s) and deletes it when it stops cleanly. `owner` is also the lease owner of the
#: jobs the process runs (`jobs.lease_owner`).
servers = Table(
    "servers", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("poll_s", Float, nullable=False),
    Column("max_jobs", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("owner", name="uq_servers_owner"),
)


#: The database's own id: one row holding a random UUID made when the schema was created
#: (migration 0006). Artifact folders are keyed by it (`nas.driver.artifact_dir`).
database_info = Table(
    "database_info", metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("id = 1", name="ck_database_info_one_row"),
)
