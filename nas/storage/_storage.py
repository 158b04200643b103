"""`Storage`: a database of jobs, trials and measurements, one attribute per area:
`storage.jobs` (jobs, leases, claims), `storage.trials` (trials, weights, reports),
`storage.measurements` (device values from outside jobs) and `storage.servers` (the
`nas serve` registry). Read-side queries over several areas live beside it (`_queries`,
`_trials_table`, `_progress`) as functions taking a `Storage`."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, select

from ..errors import NasError
from ._engine import ensure_schema, make_engine, mask_url, read_connection
from ._retry import retried
from .jobs import Jobs
from .measurements import Measurements
from .schema import database_info
from .servers import Servers
from .trials import Trials


class Storage:
    """A database of jobs and trials (SQLite file by default, PostgreSQL by URL)."""

    def __init__(self, url: str, engine: Engine | None = None, create: bool = True) -> None:
        """`create=False`: refuse to create a new SQLite file (for commands about a job
        that cannot be in a database that does not exist)."""
        #: the URL for messages and logs, password masked; only the engine holds the real one
        self.url = mask_url(url)
        self.engine = engine or make_engine(url, create=create)
        ensure_schema(self.engine)
        self.dialect = self.engine.dialect.name
        self._database_id: str | None = None
        self.jobs = Jobs(self.engine, self.url)
        self.trials = Trials(self.engine, self.url)
        self.measurements = Measurements(self.engine, self.url)
        self.servers = Servers(self.engine, self.url)

    @property
    def database_id(self) -> str:
        """The database's own id: a random UUID stored in it when its schema was created
        (`database_info`), which keys its artifact folders (`nas.driver.artifact_dir`).

        Stored in the database rather than derived from the URL (a hash of the URL without
        its password would be simpler) because what must agree is the database, not its
        spelling: a relative and an absolute SQLite path, `localhost` and `127.0.0.1`, another
        role or a connection pooler all name one database and must find one checkpoint, and a
        database moved or restored elsewhere (`mv`, `pg_dump`/`pg_restore`) keeps its jobs, so
        it keeps their checkpoints. A copied SQLite file keeps the id too: right for a backup
        or a move (its job N is the same search), while a copy run on beside its original
        must be given its own `NAS_ARTIFACTS`."""
        if self._database_id is None:
            self._database_id = self._read_database_id()
        return self._database_id

    @retried()
    def _read_database_id(self) -> str:
        with self.read() as conn:
            value = conn.execute(select(database_info.c.uuid)).scalar_one_or_none()
        if value is None:
            raise NasError(f"the database {self.url} has no id (its `database_info` row was "
                           "deleted): its artifact folders cannot be told from another's")
        return value

    def close(self) -> None:
        self.engine.dispose()

    def read(self) -> Connection:
        """A connection for reads (see `read_connection`); writes use `engine.begin()`."""
        return read_connection(self.engine)
