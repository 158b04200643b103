"""Engines and schema versions: SQLite (WAL, busy timeout) or PostgreSQL by URL."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from ..errors import NasError

DEFAULT_URL = "sqlite:///nas.db"
_MIGRATIONS = Path(__file__).parent / "migrations"
_READ_ONLY = "nas_read_only"


#: Query parameters of a URL that hold a secret (libpq reads `?password=` too).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`: the only form of a database URL that may
    reach a message, a log line or another process's command line. SQLAlchemy renders it;
    what SQLAlchemy cannot parse loses everything up to its last `@` (user and password)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _mask_unparsed(url)
    secret = {key for key in parsed.query if key.lower() in _SECRET_PARAMETERS}
    if parsed.password is None and not secret:
        return url  # as the user spelled it (rendering would percent-encode a path's `@`)
    query = {key: ("***" if key in secret else value) for key, value in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


def _mask_unparsed(url: str) -> str:
    scheme, separator, rest = url.partition("://") if "://" in url else ("", "", url)
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    if "password" in rest.lower():
        rest = rest.split("?", 1)[0] + "?***"
    return scheme + separator + rest


def normalise_url(url: str) -> str:
    """Accept `postgresql://` (use psycopg 3) and plain file paths (as SQLite)."""
    if "://" not in url:
        raise NasError(f"--db: {mask_url(url)!r} is not a database URL "
                       "(expected e.g. sqlite:///nas.db or postgresql://user@host/db)")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: A file holding the PostgreSQL password (a Docker secret, `/run/secrets/...`), for a URL
#: without one: the password then lives in no URL, environment variable or command line.
PASSWORD_FILE_ENV = "NAS_DB_PASSWORD_FILE"


def _with_password_file(url: URL) -> URL:
    """`url` with the password read from `NAS_DB_PASSWORD_FILE` when it has none (the file's
    whole content less a trailing newline, as the postgres image reads POSTGRES_PASSWORD_FILE)."""
    path = os.environ.get(PASSWORD_FILE_ENV)
    if not path or url.password is not None:
        return url
    try:
        password = Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise NasError(f"{PASSWORD_FILE_ENV}: cannot read {path!r}: "
                       f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return url.set(password=password)


def make_engine(url: str, create: bool = True) -> Engine:
    """An engine for `url`; with `create=False` a SQLite file must exist already."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise NasError(f"--db: cannot parse database URL {mask_url(url)!r}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise NasError(f"--db: unsupported database {backend!r} (use sqlite or postgresql)")
    try:
        if backend == "sqlite":
            return _sqlite_engine(url, parsed.database, create)
        return create_engine(_with_password_file(parsed), pool_pre_ping=True, pool_size=5,
                             max_overflow=5)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise NasError(f"--db: no driver for {mask_url(url)!r}: {exc}") from None


#: The first 16 bytes of every SQLite database file (https://sqlite.org/fileformat.html).
_SQLITE_HEADER = b"SQLite format 3\x00"
#: What SQLite says about a file that is not a database or is damaged.
_DAMAGED = ("file is not a database", "database disk image is malformed", "file is encrypted")


def not_sqlite_error(database: str, why: str) -> NasError:
    return NasError(f"database {database!r} is not a valid SQLite database ({why}); it was "
                    "left as it is: restore it from a backup or give another --db")


def _check_sqlite_header(path: Path) -> None:
    """Refuse a file that is not a SQLite database before the engine opens it (opening one
    runs pragmas that write). The file is read through SQLite, read-only, never with a plain
    file handle: closing any handle on a database file drops every POSIX lock this process
    holds on it, SQLite's own included, and then another process may checkpoint and delete
    the WAL under this process's connections, which from then on see no new commit (a
    `nas serve` registered after that was invisible to the process that had checked)."""
    if not path.is_file() or path.stat().st_size == 0:
        return  # missing (SQLite's own error says so) or empty (a new database)
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        if any(text in str(exc) for text in _DAMAGED):
            raise not_sqlite_error(str(path), str(exc)) from None


def damaged_sqlite(url: str, exc: BaseException) -> NasError | None:
    """The one-line error for `exc` when it says the SQLite file at `url` is damaged (a valid
    header over missing or corrupt pages surfaces only when a page is read), else None."""
    from sqlalchemy.exc import DatabaseError

    if not isinstance(exc, DatabaseError) or not url.startswith("sqlite"):
        return None
    first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else ""
    if not any(text in first for text in _DAMAGED):
        return None
    try:
        database = make_url(normalise_url(url)).database or url
    except (ArgumentError, ValueError, NasError):
        database = url
    return not_sqlite_error(database, first)


def _sqlite_engine(url: str, database: str | None, create: bool) -> Engine:
    in_memory = database in (None, "", ":memory:")
    if not in_memory and not create and not Path(database).expanduser().exists():
        raise NasError(f"--db: SQLite file {database!r} does not exist")
    if not in_memory:
        _check_sqlite_header(Path(database).expanduser())
    if not in_memory:
        folder = Path(database).expanduser().resolve().parent
        if not folder.is_dir():
            raise NasError(f"--db: folder {str(folder)!r} of the SQLite file does not exist")
    kwargs = {"poolclass": StaticPool} if in_memory else {}
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                           **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # noqa: ANN001 - DBAPI callback
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below take over
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001 - take the write lock up front: no upgrade deadlocks
        # ... except for reads (`read_connection`): under WAL they never wait or block
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def read_connection(engine: Engine) -> Connection:
    """A connection for reads only. On SQLite its transaction is deferred: it takes no write
    lock, so readers never wait for the driver's writes nor hold them up (WAL)."""
    return engine.connect().execution_options(**{_READ_ONLY: True})


def _alembic_config(connection):  # noqa: ANN001, ANN202
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts():  # noqa: ANN202
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(config)


def head_revision() -> str:
    return _scripts().get_current_head()


def _known_revision(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with read_connection(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision` (what `nas db upgrade` runs)."""
    from alembic import command
    from alembic.util import CommandError

    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
    except CommandError as exc:  # e.g. the database is at a revision this nas does not know
        raise NasError(f"--db: cannot upgrade the schema: {exc}") from None


#: Key of the PostgreSQL advisory lock held while a process creates the schema.
_SCHEMA_LOCK = 0x6E61735F736368  # "nas_sch"


def _create_schema(engine: Engine) -> None:
    """Create the schema in an empty database, once, however many processes open it at the
    same moment (several `nas serve` started on a new database). The creation holds a lock
    (PostgreSQL: a transaction-level advisory lock; SQLite: the write lock of its BEGIN
    IMMEDIATE) and looks again under it: a process that waited finds the schema made by
    another and leaves it. Before, the losers failed (SQLite: a false "not created by nas";
    PostgreSQL: a duplicate key in pg_type)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        if MigrationContext.configure(conn).get_current_revision() is not None:
            return  # another process created it while this one waited for the lock
        if set(inspect(conn).get_table_names()) & {"jobs", "trials"}:
            raise NasError("--db: the database has nas tables but no schema version; "
                           "it was not created by nas")
        command.upgrade(_alembic_config(conn), "head")


def ensure_schema(engine: Engine) -> None:
    """Create the schema in an empty database; refuse a database at an unknown revision."""
    try:
        revision = current_revision(engine)
    except DatabaseError as exc:
        damaged = damaged_sqlite(str(engine.url), exc)
        if damaged is not None:
            raise damaged from None
        if not isinstance(exc, OperationalError):
            raise
        raise NasError(f"--db: cannot connect: {str(exc.orig).strip().splitlines()[0]}") from None
    if revision is None:
        _create_schema(engine)
        revision = current_revision(engine)
    head = head_revision()
    if revision != head and not _known_revision(revision):
        raise NasError(f"--db: schema revision {revision} is unknown to this version of nas "
                       f"(newest {head}): the database was made by a newer nas; upgrade nas, "
                       "then run `nas db upgrade`")
    if revision != head:
        raise NasError(f"--db: schema revision {revision} differs from this version's {head}; "
                       "run `nas db upgrade`")
