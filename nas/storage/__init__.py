"""SQL storage: the single source of truth for jobs, trials and measurements."""

from ._area import NewTrial, as_utc, utcnow
from ._engine import (
    DEFAULT_URL,
    current_revision,
    head_revision,
    make_engine,
    mask_url,
    upgrade,
)
from ._progress import PhaseProgress, job_progress, set_progress
from ._queries import (
    best_trials,
    device_measurements,
    get_trial,
    pareto_front,
    preferred_device_values,
    stored_values,
    trials_with_device_value,
    unknown_measurement_count,
)
from ._storage import Storage
from ._trials_table import TrialsPage, trials_page
from .jobs import JobRecord, Jobs, JobSummary, new_owner, owner_is_dead_here
from .measurements import MeasurementRow, Measurements
from .servers import ServerRecord, Servers
from .trials import ScoredResult, TrialRecord, Trials

__all__ = [
    "DEFAULT_URL", "MeasurementRow", "NewTrial", "Storage", "ScoredResult", "as_utc", "best_trials",
    "current_revision", "device_measurements", "get_trial", "head_revision", "make_engine",
    "mask_url", "pareto_front", "preferred_device_values", "stored_values",
    "TrialsPage", "trials_page", "trials_with_device_value",
    "unknown_measurement_count", "upgrade", "utcnow",
    "PhaseProgress", "job_progress", "set_progress",
    "JobRecord", "Jobs", "JobSummary", "Measurements", "ServerRecord", "Servers",
    "TrialRecord", "Trials",
    "new_owner", "owner_is_dead_here",
]
