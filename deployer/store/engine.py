"""The database underneath every part of the store: engine, migrations, short transactions.

SQLite (WAL, writers take the lock up front) or PostgreSQL through psycopg2. Each
call of a store part runs in its own short transaction, so worker threads and the
web thread share one engine; SQLAlchemy and Alembic errors become ``StoreError`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from deployer.errors import Reason, TransientError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Execution option asking SQLite for BEGIN IMMEDIATE (see _on_sqlite_begin).
_SQLITE_WRITE = "deployer_sqlite_write"
_T = TypeVar("_T")


class StoreError(TransientError):
    """The database failed or refused a request; retry with backoff."""

    reason = Reason.INTERNAL_ERROR


class StoreConflictError(StoreError):
    """A unique key was taken by a concurrent writer; the caller may re-read and retry."""


class Database:
    """One engine and its session factory; ``transaction`` is the only way the parts touch it."""

    def __init__(self, url: str) -> None:
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_error: str | None = None  # the last write's failure, until a write succeeds again

    def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is there already."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        try:
            with self.engine.execution_options(**{_SQLITE_WRITE: True}).begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except CommandError as exc:
            raise StoreError(f"store: database migration failed: {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(describe("migrate", exc)) from exc

    def ping(self) -> None:
        """Raise when the database does not answer, or when its last write failed (a full disk
        still answers reads)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(describe("ping", exc)) from exc
        if self.write_error is not None:
            raise StoreError(f"the last write failed: {self.write_error}")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, op: str, *, write: bool = False) -> Iterator[Session]:
        """One short transaction; commits on success and translates database errors."""
        try:
            with self._sessions.begin() as session:
                if write:
                    session.connection(execution_options={_SQLITE_WRITE: True})
                yield session
        except IntegrityError as exc:
            raise StoreConflictError(describe(op, exc)) from exc
        except SQLAlchemyError as exc:
            message = describe(op, exc)
            if write:
                self.write_error = message
            raise StoreError(message) from exc
        if write:
            self.write_error = None


def retry_once(action: Callable[[], _T]) -> _T:
    """Run ``action``; when a concurrent writer won a unique key, run it again (it now sees that row)."""
    try:
        return action()
    except StoreConflictError:
        return action()


def describe(op: str, exc: SQLAlchemyError) -> str:
    """A one-line message without SQL text or bound values."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"store: {op} failed: {type(cause).__name__}: {first_line}"


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(_with_installed_driver(parsed), pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as exc:
        raise StoreError(f"store: database url is not usable: {exc}") from exc


def _with_installed_driver(url: URL) -> URL:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; deployer ships psycopg2.
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg2")
    return url


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # A 30 s busy timeout: writers queue behind each other instead of failing at once.
        connect_args={"check_same_thread": False, "timeout": 30},
        # One shared connection keeps an in-memory database alive (tests only; not for threads).
        poolclass=StaticPool if memory else None,
    )
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver's own BEGIN handling skips SELECTs and DDL; SQLAlchemy emits BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    # Writers take the write lock up front: a read lock upgraded later can fail with
    # "database is locked" at once, without waiting for the busy timeout.
    write = connection.get_execution_options().get(_SQLITE_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
