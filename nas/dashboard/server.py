"""Start the dashboard: read the token, open the database as the other commands do (and
refuse one that is not ours), take the port before uvicorn starts (one clear line when it is
in use), then serve until Ctrl-C."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import NasError
from ..storage import Storage

TOKEN_ENV = "NAS_DASHBOARD_TOKEN"
LOCAL_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def read_token(token_file: Path | None) -> str | None:
    """The access token: the file's content (less its trailing newline) or the
    NAS_DASHBOARD_TOKEN environment variable; never a command-line value (`ps` shows argv
    to every user)."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise NasError(f"--token-file: cannot read {str(token_file)!r}: "
                           f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        if not token:
            raise NasError(f"--token-file: {str(token_file)!r} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port(port: int) -> None:
    """1 to 65535, or 0 for any free port (the line printed at start says which)."""
    if isinstance(port, bool) or not 0 <= port <= 65535:
        raise NasError(f"--port must be between 1 and 65535 (or 0: any free port), got {port}")


def open_storage(url: str) -> Storage:
    """The database, with the checks every command makes (a missing SQLite file, a damaged
    file, a schema of another version), and one more: a database holding tables but no nas
    schema is refused, not given ours beside its own, and is not touched at all (a SQLite
    file is looked at through a read-only connection, before the engine's pragmas)."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    from ..storage import make_engine, mask_url
    from ..storage._retry import retry_window_s

    retry_window_s()
    engine = make_engine(url, create=False)  # checks a SQLite file's header; connects not
    try:
        if engine.dialect.name == "sqlite":
            tables = _sqlite_tables(engine.url.database)
        else:
            with engine.connect() as conn:
                tables = inspect(conn).get_table_names()
    except OperationalError as exc:
        engine.dispose()
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise NasError(f"--db: cannot connect: {first}") from None
    if tables and "alembic_version" not in tables:
        engine.dispose()
        raise NasError(f"--db: {mask_url(url)} is not a nas database (it has tables such as "
                       f"{sorted(tables)[0]!r} but no nas schema version); it was left as it is")
    return Storage(url, engine=engine)


def _sqlite_tables(database: str | None) -> list[str]:
    """The tables of a SQLite file, read without writing anything (none: a new database)."""
    import sqlite3
    import urllib.parse

    if database in (None, "", ":memory:") or not Path(database).expanduser().is_file():
        return []
    path = Path(database).expanduser().resolve()
    probe = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
    try:
        return [name for (name,) in probe.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        from ..storage._engine import not_sqlite_error

        raise not_sqlite_error(str(database), str(exc)) from None
    finally:
        probe.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; NasError when the port is taken or the host is not
    an address of this machine."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NasError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise NasError(f"--port: port {port} on {host} is already in use; give another "
                           "with --port") from None
        raise NasError(f"--host/--port: cannot listen on {host}:{port}: "
                       f"{exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(url: str, host: str, port: int, allow_actions: bool, token_file: Path | None,
        say: Callable[[str], None] = print) -> None:
    """Serve the dashboard until interrupted."""
    import uvicorn

    from .app import create_app

    check_port(port)
    token = read_token(token_file)
    storage = open_storage(url)
    sock = bind(host, port)
    local = is_local(host)
    if not local and token is None:
        print(f"warning: the dashboard listens on {host}, reachable from other machines, "
              f"without a token: anyone who can reach port {port} can read every job "
              f"(set {TOKEN_ENV} or --token-file)", file=sys.stderr, flush=True)
    app = create_app(storage, allow_actions=allow_actions, token=token,
                     allowed_hosts=LOCAL_NAMES if local else None)
    shown = f"[{host}]" if ":" in host else host
    mode = "actions allowed" if allow_actions else "read-only"
    say(f"nas dashboard at http://{shown}:{sock.getsockname()[1]}/ ({mode}"
        f"{', token required' if token else ''}) over {storage.url}; Ctrl-C stops it")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C: stopped, no traceback
    finally:
        sock.close()
        storage.close()
