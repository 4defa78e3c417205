"""Pytest plugin: a migrated ``store`` on SQLite and on PostgreSQL.

PostgreSQL comes from ``DEPLOYER_TEST_PG_URL`` (a server URL allowed to create
databases; default ``postgresql://postgres@127.0.0.1:5432/postgres``). Each test
gets a fresh ``deployer_test_<random>`` database, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from deployer.store import Store

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _with_database(url: str, database: str) -> str:
    # render_as_string: str(url) would mask a password with "***".
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _admin(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE refuse to run in one)."""
    # psycopg2 is the driver deployer ships; SQLAlchemy 2.1 would default to psycopg 3.
    parsed = make_url(url).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(parsed, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server URL; skips (fails in CI) when the server cannot be reached."""
    url = os.environ.get("DEPLOYER_TEST_PG_URL", DEFAULT_PG_URL)
    try:
        _admin(url, "SELECT 1")
    except sa.exc.DBAPIError as exc:
        parsed = make_url(url)
        error = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        message = f"PostgreSQL not reachable at {parsed.host}:{parsed.port or 5432}: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@contextmanager
def fresh_pg_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server, dropped (even with open connections) on exit."""
    name = f"deployer_test_{secrets.token_hex(6)}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_url, name)
    finally:
        _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL nobody has used yet; the SQLite file sits in a directory not created yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'deployer.db'}"
        return
    server_url: str = request.getfixturevalue("pg_server_url")
    with fresh_pg_database(server_url) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated ``Store`` on ``store_url``."""
    instance = Store(store_url)
    instance.migrate()
    try:
        yield instance
    finally:
        instance.close()
