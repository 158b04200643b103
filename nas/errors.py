"""Errors the CLI turns into one clear line and exit status 2."""


class NasError(Exception):
    """A user-facing error: bad input, unknown job, refused operation."""


class SpecError(NasError):
    """A job spec field is missing or wrong; the message names the field."""


class LeaseHeldError(NasError):
    """Another live driver holds the job's lease."""


class DatabaseUnavailableError(NasError):
    """The database stayed unreachable for the whole retry window (`NAS_DB_RETRY_S`). The job
    keeps every result stored so far; `nas resume` or a `nas serve` continues it."""
