"""Helpers shared by the storage tests: the databases to test on, Optuna's own view of a
study, field-by-field comparison of trials, and counting the SQL a storage sends."""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

# Registered for every test (conftest.py), including the native ones that run where Optuna
# is not installed (the minimum-torch environment, a GPU machine): Optuna, SQLAlchemy and
# panther's tuner are imported only when a storage test uses these helpers.
if TYPE_CHECKING:
    import optuna

    from panther.tuner.storage_view import ProcessStorage


def _postgres() -> str | None:
    from panther.tuner.storage import StorageError, check_storage

    url = os.environ.get("PANTHER_TEST_POSTGRES_URL")
    if not url:
        return None
    try:
        check_storage(url)
    except StorageError:
        return None
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A database URL: a SQLite file, and the test PostgreSQL server when there is one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'view.db'}"
    found = _postgres()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test against PostgreSQL (.ci/run starts it)")
        pytest.skip("no PostgreSQL server; `export PANTHER_TEST_POSTGRES_URL=$(make -s postgres)`")
    return found


@contextmanager
def counting(storage: ProcessStorage):
    """Count the SQL statements and commits ``storage`` sends within the block (a write
    outside a transaction counts as one commit)."""
    import sqlalchemy

    counts: Counter[str] = Counter()
    engine = storage.inner._backend.engine

    def statement(conn, cursor, text, *args):
        counts["statements"] += 1
        # A write in the driver's autocommit mode (storage_reader.autocommit) commits on its
        # own, unseen by SQLAlchemy's commit event.
        # (``is True``: Python 3.12's sqlite3 has an ``autocommit`` of -1 by default.)
        if getattr(conn.connection.dbapi_connection, "autocommit", False) is True \
                and not text.lstrip().upper().startswith("SELECT"):
            counts["commits"] += 1

    def commit(conn):
        counts["commits"] += 1

    sqlalchemy.event.listen(engine, "before_cursor_execute", statement)
    sqlalchemy.event.listen(engine, "commit", commit)
    try:
        yield counts
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", statement)
        sqlalchemy.event.remove(engine, "commit", commit)


def optuna_view(url: str, study_id: int) -> list[optuna.trial.FrozenTrial]:
    """The trials as Optuna's own storage reads them (a fresh, uncached one)."""
    import optuna

    from panther.tuner.storage import quiet_optuna

    with quiet_optuna():
        rdb = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        return rdb.get_all_trials(study_id, deepcopy=False)
    finally:
        rdb.engine.dispose()


def same(a: list, b: list) -> None:
    assert [t.number for t in a] == [t.number for t in b]
    for x, y in zip(a, b):
        left, right = dict(vars(x)), dict(vars(y))
        # NaN never equals itself: compare intermediate values by their text.
        left["intermediate_values"] = repr(left["intermediate_values"])
        right["intermediate_values"] = repr(right["intermediate_values"])
        assert left == right, f"trial {x.number}"


@pytest.fixture
def away_from_utc(monkeypatch):
    """A local time zone other than UTC, so that stored dates must be converted as Optuna does."""
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset on this platform")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
