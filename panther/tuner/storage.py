"""Where a tuning run lives when several processes (or machines) share it.

Storages
--------
A run is kept in an Optuna storage given by URL:

* ``sqlite:///path/run.db`` -- one file, several processes on one machine (SQLite
  serialises writers; fine for a few workers).
* ``postgresql://user:password@host:port/db`` (or ``postgresql+psycopg2://...``) -- workers
  on many machines (``pip install panther-rnla[postgres]`` for the driver).
* ``journal:///abs/path/run.log`` or ``journal:relative/run.log`` (a plain path ending in
  ``.log`` works too) -- Optuna's journal storage on a file: no database, many processes on
  one machine (or on a shared file system that supports the lock).

:func:`parse_storage_url` validates the URL and :func:`check_storage` checks, before any
evaluation runs, that the storage can really be written (the SQLite/journal folder
exists and is writable, a database server answers); both raise :class:`StorageError`
naming the URL (with its password hidden). :func:`open_storage` builds the Optuna
storage, with Optuna's trial heartbeat enabled on RDB storages when asked.

Liveness
--------
Every process that drives a run holds a *lease*: a RUNNING trial in the run's
bookkeeping study (``f"{prefix}#run"``, see :func:`run_study_name`) whose
system attributes record the process id, host, role (``"worker"`` or ``"tune"``), start
time and last beat. A background thread refreshes the beat (:class:`Lease`). Another
process judges a lease (:func:`lease_alive`): on the same host by whether that process
still exists; elsewhere by the age of its last beat. Lease numbers are trial numbers, so
they are unique and ordered across processes without any coordinator.

A RUNNING group trial is *stale* when the lease that owns it is dead (journal storage)
or when Optuna's heartbeat says so (RDB storages: :func:`optuna.storages.fail_stale_trials`
with :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`). :func:`reap_stale_trials`
marks stale trials FAIL and, when asked, enqueues their parameters again so another
worker retries them; trials of live processes are never touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "StorageError",
    "StorageSpec",
    "parse_storage_url",
    "check_storage",
    "open_storage",
    "run_study_name",
    "Lease",
    "LeaseInfo",
    "live_leases",
    "lease_alive",
    "reap_stale_trials",
    "OWNER_ATTR",
    "WAITING_SUFFIX",
    "quiet_optuna",
    "ConcurrentRunError",
    "check_no_conflict",
]

#: System attribute of a group trial: the id of the lease (process) evaluating it, with
#: :data:`WAITING_SUFFIX` appended while that process holds it without evaluating yet.
OWNER_ATTR = "panther_owner"
WAITING_SUFFIX = "|waiting"
#: System attributes of a lease trial in the run study.
_LEASE_ATTR = "panther_lease"
_BEAT_ATTR = "panther_beat"
_CURRENT_ATTR = "panther_current"
# A worker's fingerprint of its run, on its lease: the first lease's decides the run's.
_FINGERPRINT_ATTR = "panther_fingerprint"
#: User attribute of a re-enqueued trial: the number of the stale trial it retries.
RETRY_ATTR = "panther_retry_of"
_RDB_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
_JOURNAL_SUFFIXES = (".log", ".journal")


class StorageError(ValueError):
    """A storage URL that is malformed, unusable or unreachable; the message names the URL."""


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage URL.

    Attributes:
        url: the URL as given (the RDB form for journal files is not used).
        kind: ``"rdb"`` (SQLAlchemy URL) or ``"journal"`` (Optuna journal file).
        dialect: the database dialect (``"sqlite"``, ``"postgresql"``...) or ``"journal"``.
        path: the SQLite or journal file (``None`` for servers and in-memory SQLite).
        display: the URL with any password hidden, for messages.
    """

    url: str
    kind: str
    dialect: str
    path: Path | None
    display: str

    @property
    def shared(self) -> bool:
        """Whether other processes can open the same storage (not in-memory SQLite)."""
        return not (self.dialect == "sqlite" and self.path is None)


def parse_storage_url(url: Any) -> StorageSpec:
    """Validate a storage URL's form (nothing is opened) and say what it points to.

    Raises:
        StorageError: naming the URL and the accepted forms.
    """
    forms = ("accepted forms: 'sqlite:///path/run.db', 'postgresql://user:pass@host/db', "
             "'journal:///abs/path/run.log' (or a plain path ending in .log)")
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"storage must be a non-empty URL string, got {url!r}; {forms}")
    url = url.strip()
    if url.startswith("journal:"):
        rest = url[len("journal:"):]
        rest = rest[2:] if rest.startswith("//") else rest
        if not rest:
            raise StorageError(f"storage {url!r} names no file; {forms}")
        return StorageSpec(url, "journal", "journal", Path(rest), url)
    if "://" not in url and url.endswith(_JOURNAL_SUFFIXES):
        return StorageSpec(url, "journal", "journal", Path(url), url)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception as exc:  # ArgumentError and friends: a string SQLAlchemy cannot read
        raise StorageError(f"storage {url!r} is not a valid URL ({exc}); {forms}") from exc
    dialect = parsed.get_backend_name()
    if dialect == "postgresql" and "+" not in parsed.drivername:
        # A bare postgresql:// means SQLAlchemy's default driver (psycopg 3); use whichever
        # of psycopg / psycopg2 is installed so both spellings of the URL work.
        driver = _installed_postgres_driver()
        if driver is not None:
            parsed = parsed.set(drivername=f"postgresql+{driver}")
            url = parsed.render_as_string(hide_password=False)
    display = parsed.render_as_string(hide_password=True)
    if dialect not in _RDB_DIALECTS:
        raise StorageError(f"storage {display!r}: unknown database {dialect!r}; {forms}")
    path = None
    if dialect == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
    return StorageSpec(url, "rdb", dialect, path, display)


def _installed_postgres_driver() -> str | None:
    import importlib.util

    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return module
    return None


def check_storage(url: Any, *, connect: bool = True) -> StorageSpec:
    """:func:`parse_storage_url`, then check the storage can be used, before any work runs.

    For files (SQLite, journal): the folder exists and is writable, and an existing file
    is a writable regular file. For servers (with ``connect=True``): the driver is
    installed and the server accepts a connection.

    Raises:
        StorageError: naming the URL, the problem and the fix.
    """
    spec = parse_storage_url(url)
    if spec.path is not None:
        _check_file(spec)
    elif spec.kind == "rdb" and spec.dialect != "sqlite":
        try:
            import sqlalchemy

            engine = sqlalchemy.create_engine(spec.url, **_connect_timeout(spec))
        except ModuleNotFoundError as exc:
            raise StorageError(
                f"storage {spec.display!r}: the database driver is not installed ({exc}); for "
                "PostgreSQL: pip install 'panther-rnla[postgres]' (psycopg2-binary)") from exc
        except Exception as exc:
            raise StorageError(f"storage {spec.display!r} cannot be used: {exc}") from exc
        if connect:
            try:
                with engine.connect():
                    pass
            except Exception as exc:
                raise _cannot_connect(spec, exc) from exc
            finally:
                engine.dispose()
    return spec


def _cannot_connect(spec: StorageSpec, exc: BaseException) -> StorageError:
    """The error for a database server that refuses or does not answer a connection."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageError(
        f"storage {spec.display!r}: cannot connect to the database server ({first}); "
        "check that it is running and the URL's host, port, user and password "
        "(for a local test server: make postgres)")


def _check_file(spec: StorageSpec) -> None:
    path = spec.path
    assert path is not None
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists():
        if not path.is_file():
            raise StorageError(f"storage {spec.display!r}: {str(path)!r} exists and is not a file; "
                               "point the URL at a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"storage {spec.display!r}: {str(path)!r} is not readable and "
                               "writable by this user; fix its permissions or use another file")
        return
    if not folder.is_dir():
        raise StorageError(f"storage {spec.display!r}: the folder {str(folder)!r} does not exist; "
                           "create it or point the URL at an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"storage {spec.display!r}: cannot create files in {str(folder)!r} "
                           "(no write permission); use a folder you can write to")


def _connect_timeout(spec: StorageSpec) -> dict[str, Any]:
    """Engine settings for a database server: a connection timeout, and (psycopg2) no
    hstore lookup."""
    if spec.dialect != "postgresql":
        return {}
    kwargs: dict[str, Any] = {"connect_args": {"connect_timeout": 10}}
    from sqlalchemy.engine import make_url

    if make_url(spec.url).get_driver_name() == "psycopg2":
        # Optuna stores no hstore: skip psycopg2's lookup of that type on the first
        # connection (a transaction of its own, three round trips at every worker's start).
        kwargs["use_native_hstore"] = False
    return kwargs


def _engine_kwargs(spec: StorageSpec) -> dict[str, Any]:
    """SQLAlchemy engine settings for many worker processes on one database."""
    if spec.dialect == "sqlite":
        # Writers wait for SQLite's lock instead of failing with "database is locked".
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {
        # Each worker uses its main thread and one heartbeat thread: a small pool is plenty,
        # and many workers must not exhaust the server's connection slots.
        "pool_size": 2,
        "max_overflow": 4,
    }
    kwargs.update(_connect_timeout(spec))
    return kwargs


#: A pooled database connection idle for longer than this is tested before use.
PING_AFTER_IDLE_S = 10.0


def _ping_idle_connections(engine: Any) -> None:
    """Test a pooled connection before use when it has been idle for a while.

    A server may close a connection that sat idle through a long evaluation (a restart,
    an idle timeout, a firewall); such a connection is replaced instead of failing the
    next storage call. SQLAlchemy's ``pool_pre_ping`` tests on *every* checkout, which is a
    round trip more for each of the ten or so transactions a trial takes; a connection
    used a moment ago needs no test. (SQLAlchemy's recipe: raising ``DisconnectionError``
    in a checkout handler makes the pool retry with a fresh connection.)
    """
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "checkin")
    def _used(dbapi_connection: Any, record: Any) -> None:
        record.info["panther_used"] = time.monotonic()

    @sqlalchemy.event.listens_for(engine, "checkout")
    def _test(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        used = record.info.get("panther_used")
        if used is None or time.monotonic() - used < PING_AFTER_IDLE_S:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            # The driver began a transaction for the test: end it, so the checkout starts
            # idle (storage_reader.autocommit switches the driver's mode, which needs that).
            dbapi_connection.rollback()
        except Exception as exc:
            raise sqlalchemy.exc.DisconnectionError(f"stale connection: {exc}") from exc


#: Database-server URLs whose tables this process has created or checked (see
#: :func:`open_storage`).
_SCHEMA_CHECKED: set[str] = set()


def open_storage(url: str | StorageSpec, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, retry_stale: bool = True) -> Any:
    """Build the Optuna storage for ``url`` (checked with :func:`check_storage` first).

    Args:
        url: a storage URL (see the module docstring) or a parsed :class:`StorageSpec`.
        heartbeat_interval: seconds between trial heartbeats on RDB storages (Optuna's
            ``heartbeat_interval``); ``None`` leaves the heartbeat off (one process).
        grace_period: seconds without a heartbeat after which a RUNNING trial is stale
            (default ``4 * heartbeat_interval``).
        retry_stale: on RDB storages with a heartbeat, re-enqueue stale trials
            (``RetryHeartbeatStaleTrialCallback``) so another worker evaluates them.

    Raises:
        StorageError: naming the URL when the storage cannot be created.
    """
    import optuna

    from panther.tuner.storage_view import ProcessStorage
    from panther.tuner.storage_writer import WriterRDBStorage

    spec = url if isinstance(url, StorageSpec) else check_storage(url)
    if spec.kind == "journal":
        from optuna.storages.journal import JournalStorage

        try:
            return ProcessStorage(JournalStorage(_journal_file(str(spec.path))))
        except OSError as exc:
            raise StorageError(f"storage {spec.display!r} cannot be opened: {exc}") from exc
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(spec)}
    if heartbeat_interval is not None:
        interval = max(1, int(heartbeat_interval))
        kwargs["heartbeat_interval"] = interval
        kwargs["grace_period"] = int(grace_period) if grace_period else 4 * interval
        if retry_stale:
            with quiet_optuna():
                kwargs["heartbeat_stale_trial_callback"] = \
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    if spec.url in _SCHEMA_CHECKED:
        # This process has created and checked this database's tables already (Optuna's
        # schema check takes a few queries and a fifth of a second on a busy server).
        kwargs.update(skip_compatibility_check=True, skip_table_creation=True)
    last: Exception | None = None
    # Several workers starting at once may race to create the schema (duplicate key on the
    # version table); the loser finds the tables made and succeeds on the next attempt.
    for attempt in range(5):
        try:
            with quiet_optuna():
                # Optuna's RDB storage, creating trials with panther's direct writer
                # (see storage_writer: the same rows, fewer statements).
                rdb = WriterRDBStorage(spec.url, **kwargs)
            if spec.dialect != "sqlite":
                _ping_idle_connections(rdb.engine)
            if spec.dialect != "sqlite":  # a file may be deleted and made again: check it
                _SCHEMA_CHECKED.add(spec.url)
            return ProcessStorage(rdb)
        except Exception as exc:
            last = exc
            if not _is_db_race(exc):
                break
            time.sleep(0.2 * (attempt + 1))
    import sqlalchemy

    if isinstance(last, sqlalchemy.exc.OperationalError) and spec.dialect != "sqlite":
        # No server answered (callers that skipped check_storage's connection test get
        # its message here, with one connection less).
        raise _cannot_connect(spec, last.orig if last.orig is not None else last) from last
    first = str(last).strip().splitlines()[0] if last is not None and str(last).strip() else ""
    raise StorageError(f"storage {spec.display!r} cannot be opened: "
                       f"{type(last).__name__}: {first}") from last


def _journal_file(path: str) -> Any:
    """Optuna's journal file backend, locked with ``flock(2)`` where the OS has it.

    Optuna's default lock is a lock *file* polled with a back-off of up to a second, which
    many workers turn into long waits, and which a killed process leaves behind for 30 s.
    An ``flock`` queues waiters in the kernel and dies with its process. Each append is
    written whole, under the lock, before the call returns. Every panther process opens
    journal files this way; another tool writing the same file at the same time must lock
    it the same way.

    Durability (see :func:`_needs_fsync`): a write that ends a trial (COMPLETE, FAIL...),
    creates one in a final or waiting state, or changes a study is synced to disk
    (``fsync``) before the call returns; writes in the middle of a trial (its parameters,
    attributes, lease beats) are not. A killed process cannot lose or tear a write either
    way (the data is in the kernel once ``write`` returns); the sync matters for a machine
    crash, and since ``fsync`` flushes the whole file, a synced trial end makes that
    trial's earlier writes (and every other worker's) durable too. A crash can lose only
    the unsynced middle of trials that were RUNNING anyway, which the run treats as a dead
    worker's trials. The sync runs after the lock is released, so concurrent workers'
    syncs overlap instead of queueing one behind the other.
    """
    import json

    from optuna.storages.journal import JournalFileBackend

    try:
        import fcntl
    except ImportError:  # no flock (Windows): Optuna's own lock and append
        return JournalFileBackend(path)

    class _FlockLock:
        """``acquire``/``release`` of Optuna's journal file lock, by ``flock`` on ``path.lock``."""

        def __init__(self, target: str) -> None:
            self._path = target + ".flock"
            self._fd: int | None = None

        def acquire(self) -> bool:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return True

        def release(self) -> None:
            fd, self._fd = self._fd, None
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    class _Backend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n")
            with open(self._file_path, "ab") as fh:
                self._lock.acquire()
                try:
                    fh.write(data.encode("utf-8"))
                    fh.flush()
                finally:
                    self._lock.release()
                if any(_needs_fsync(log) for log in logs):
                    os.fsync(fh.fileno())  # durable before returning, as Optuna's own append

    backend = _Backend(path, lock_obj=_FlockLock(path))
    if not hasattr(backend, "_file_path") or not hasattr(backend, "_lock"):
        return JournalFileBackend(path)  # an Optuna whose backend is laid out differently
    return backend


#: Journal operations written in the middle of a trial (Optuna's ``JournalOperation``
#: codes: set a parameter, an intermediate value, a user or a system attribute).
_UNSYNCED_OPS = frozenset({5, 7, 8, 9})
_CREATE_TRIAL_OP = 4
_RUNNING_STATE = 0  # TrialState.RUNNING, as a journal log writes it


def _needs_fsync(log: dict[str, Any]) -> bool:
    """Whether a journal write must be on disk before its call returns.

    Everything but the writes in the middle of a trial: a crash may lose those only along
    with the RUNNING trial they belong to (see :func:`_journal_file`).
    """
    op = log.get("op_code")
    if op in _UNSYNCED_OPS:
        return False
    if op == _CREATE_TRIAL_OP:
        return int(log.get("state", _RUNNING_STATE)) != _RUNNING_STATE
    return True


def _is_db_race(exc: Exception) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(s in text for s in ("unique", "duplicate", "already exists", "locked", "integrity"))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's warnings about experimental features (heartbeat, retry callback) and
    about heartbeats outside ``Study.optimize`` (panther beats for its ask/tell trials itself)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        yield


# ---------------------------------------------------------------------- leases
#: Suffix of a run's bookkeeping study (leases, run fingerprint, shared baseline).
RUN_STUDY_SUFFIX = "#run"


def run_study_name(prefix: str | None) -> str:
    """The bookkeeping study of a run whose group studies are named ``f"{prefix}/{group}"``."""
    return f"{prefix or 'panther'}{RUN_STUDY_SUFFIX}"


def _run_study_id(storage: Any, name: str, create: bool = True) -> int | None:
    import optuna

    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        if not create:
            return None
    try:
        return storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
    except optuna.exceptions.DuplicatedStudyError:
        return storage.get_study_id_from_name(name)


def _proc_start(pid: int) -> str | None:
    """Linux start time of ``pid`` (guards against a recycled pid), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


@dataclass
class LeaseInfo:
    """One process holding (or having held) a lease on a run.

    Attributes:
        id: the lease id (``host:pid:token``).
        number: its trial number in the run study (ordered by start).
        pid, host, role: the process, its host and ``"worker"``/``"tune"``/``"finalize"``.
        started, beat: Unix times of its start and its last beat.
        grace: seconds without a beat after which a process on another host counts as dead.
        current: ``[study name, trial number]`` the process is evaluating, or ``None``.
        state: the lease trial's Optuna state name (``"RUNNING"`` while held).
        fingerprint: the run's fingerprint as the process computed it (workers record it
            on their lease; ``None`` for other roles).
    """

    id: str
    number: int
    trial_id: int
    pid: int
    host: str
    role: str
    started: float
    beat: float
    grace: float
    proc_start: str | None
    current: list[Any] | None
    state: str
    fingerprint: Any = None

    def describe(self) -> str:
        """``"worker pid 123 on host-a (started 12:00:01, last beat 2 s ago)"``."""
        started = time.strftime("%H:%M:%S", time.localtime(self.started))
        return (f"{self.role} pid {self.pid} on {self.host} (started {started}, last beat "
                f"{max(0.0, time.time() - self.beat):.0f} s ago)")


def lease_alive(lease: LeaseInfo, now: float | None = None) -> bool:
    """Whether the process behind ``lease`` is still running.

    On this host: the process exists (and is the same process, by its start time). On
    another host: its last beat is younger than its grace period.
    """
    if lease.state != "RUNNING":
        return False
    if lease.host == socket.gethostname():
        if not _pid_alive(lease.pid):
            return False
        if lease.proc_start is not None:
            current = _proc_start(lease.pid)
            if current is not None and current != lease.proc_start:
                return False  # the pid was recycled by another process
        return True
    now = time.time() if now is None else now
    return now - lease.beat <= lease.grace


def _leases(storage: Any, run_name: str) -> list[LeaseInfo]:
    study_id = _run_study_id(storage, run_name, create=False)
    if study_id is None:
        return []
    out = []
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        record = trial.system_attrs.get(_LEASE_ATTR)
        if not isinstance(record, dict):
            continue
        out.append(LeaseInfo(
            id=record["id"], number=trial.number, trial_id=trial._trial_id, pid=int(record["pid"]),
            host=str(record["host"]), role=str(record.get("role", "worker")),
            started=float(record["started"]),
            beat=float(trial.system_attrs.get(_BEAT_ATTR, record["started"])),
            grace=float(record.get("grace", 30.0)), proc_start=record.get("proc_start"),
            current=trial.system_attrs.get(_CURRENT_ATTR), state=trial.state.name,
            fingerprint=trial.system_attrs.get(_FINGERPRINT_ATTR)))
    return out


def first_lease_fingerprint(storage: Any, run_name: str) -> Any:
    """The fingerprint on the run's lowest-numbered lease that has one (``None``: none).

    Lease numbers follow creation, and a process that created a lease sees every lease
    created before it: so every worker, whenever it looks, finds the same first one. That
    makes it the fingerprint of record for a run, even for workers that start at the same
    moment on a storage without a conditional write (a journal file).
    """
    with_fp = [lease for lease in _leases(storage, run_name) if lease.fingerprint is not None]
    return min(with_fp, key=lambda lease: lease.number).fingerprint if with_fp else None


def live_leases(storage: Any, run_name: str, *, exclude: str | None = None) -> list[LeaseInfo]:
    """The leases of ``run_name`` whose processes are alive (``exclude``: a lease id to skip)."""
    now = time.time()
    return [lease for lease in _leases(storage, run_name)
            if lease.id != exclude and lease_alive(lease, now)]


class ConcurrentRunError(RuntimeError):
    """Another live process drives the same run in a way that cannot be shared."""


def check_no_conflict(lease: Lease, display: str,
                      live: list[LeaseInfo] | None = None) -> None:
    """Refuse to go on when another live process conflicts with ``lease``.

    ``live``: the run's live leases when the caller has just read them (else they are read).

    A ``"tune"`` lease (single-process ``tune()``) conflicts with every other live process
    on the run; a worker conflicts with a live ``tune()``. Only processes that took
    their lease *earlier* count, so of two starting at once exactly the later one stops.
    Leases of this same process never conflict (one process runs its searches in turn).
    """
    if live is None:
        live = live_leases(lease.storage, lease.run_name)
    others = [other for other in live if other.id != lease.id
              and other.number < (lease.number if lease.number is not None else 1 << 62)
              and not (other.pid == os.getpid() and other.host == socket.gethostname())]
    if lease.role == "worker":
        others = [other for other in others if other.role == "tune"]
    if not others:
        return
    listed = "; ".join(other.describe() for other in others[:5])
    if lease.role == "worker":
        fix = ("a single-process tune() drives its studies alone: wait for it to finish, or "
               "start the run with workers only (panther-tune worker / SKAutoTuner.run_worker)")
    else:
        fix = ("two processes driving one study at once would evaluate the same trials twice: "
               "wait for it to finish, choose another study_name, or share the run between "
               "processes with workers (panther-tune worker / SKAutoTuner.run_worker)")
    raise ConcurrentRunError(
        f"another live process is using the tuning run {lease.run_name!r} in storage "
        f"{display}: {listed}. {fix}")


class Lease:
    """This process's lease on a run: created by :meth:`acquire`, refreshed by a thread.

    Args:
        storage: the Optuna storage object.
        run_name: the run study (:func:`run_study_name`).
        role: ``"worker"`` (shares the run), ``"tune"`` (a single-process ``tune()``) or
            ``"finalize"``.
        interval: seconds between beats.
        grace: seconds without a beat after which other hosts count this process dead.
        fingerprint: this process's fingerprint of the run, recorded on the lease (see
            :func:`first_lease_fingerprint`).
    """

    def __init__(self, storage: Any, run_name: str, role: str = "worker", interval: float = 5.0,
                 grace: float | None = None, fingerprint: Any = None) -> None:
        self.storage = storage
        self.fingerprint = fingerprint
        self.run_name = run_name
        self.role = role
        self.interval = float(interval)
        self.grace = float(grace) if grace else 4.0 * self.interval
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.number: int | None = None
        self._trial_id: int | None = None
        self._current: tuple[str, int, int] | None = None  # study name, trial number, trial id
        self._written: list[Any] | None = None  # the current trial last written to the lease
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        """Record the lease (a RUNNING trial of the run study) and start beating."""
        import optuna

        study_id = _run_study_id(self.storage, self.run_name)
        now = time.time()
        record = {"id": self.id, "pid": os.getpid(), "host": socket.gethostname(),
                  "role": self.role, "started": now, "grace": self.grace,
                  "proc_start": _proc_start(os.getpid())}
        attrs = {_LEASE_ATTR: record, _BEAT_ATTR: now}
        if self.fingerprint is not None:
            attrs[_FINGERPRINT_ATTR] = self.fingerprint
        template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                             system_attrs=attrs)
        self._trial_id = self.storage.create_new_trial(study_id, template_trial=template)
        self.number = self.storage.get_trial_number_from_id(self._trial_id)
        self._thread = threading.Thread(target=self._beat_loop, name="panther-lease", daemon=True)
        self._thread.start()
        return self

    def set_current(self, study_name: str | None, number: int | None = None,
                    trial_id: int | None = None) -> None:
        """Say which group trial this process evaluates now (``None``: none).

        The trial's Optuna heartbeat (RDB storages) is recorded at once, so a worker that
        dies right away is still found stale; the lease shows the trial from its next beat
        (it is for display: dead workers' trials are found by their owner tag).
        """
        with self._lock:
            self._current = None if study_name is None else (study_name, int(number), int(trial_id))
        self._record_trial_heartbeat()

    def _write_current(self) -> None:
        with self._lock:
            current = None if self._current is None else list(self._current[:2])
            if current == self._written:
                return
            self._written = current
        if self._trial_id is not None:
            self.storage.set_trial_system_attr(self._trial_id, _CURRENT_ATTR, current)

    def _record_trial_heartbeat(self) -> None:
        # Optuna's own heartbeat for the evaluated trial (RDB storages), read by fail_stale_trials.
        from optuna.storages._heartbeat import is_heartbeat_enabled

        with self._lock:
            current = self._current
        if current is not None and is_heartbeat_enabled(self.storage):
            self.storage.record_heartbeat(current[2])

    def beat(self) -> None:
        """Refresh the lease (and the current trial's Optuna heartbeat) once."""
        if self._trial_id is None:
            return
        self.storage.set_trial_system_attr(self._trial_id, _BEAT_ATTR, time.time())
        self._write_current()
        self._record_trial_heartbeat()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 -- a storage hiccup must not kill the worker
                continue

    def release(self) -> None:
        """Stop beating and mark the lease finished (the process left cleanly)."""
        import optuna

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._trial_id is None:
            return
        try:
            self.storage.set_trial_state_values(self._trial_id, optuna.trial.TrialState.COMPLETE,
                                                values=[0.0])
        except Exception:  # noqa: BLE001 -- already finished (reaped) or storage gone: nothing to keep
            pass
        self._trial_id = None

    def __enter__(self) -> Lease:
        return self.acquire() if self._trial_id is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def reap_stale_trials(study: Any, run_name: str, *, retry: bool = True,
                      min_age: float = 2.0, mine: str | None = None) -> list[int]:
    """Mark the RUNNING trials of dead processes FAIL; with ``retry``, enqueue them again.

    A RUNNING trial is stale when the lease named by its :data:`OWNER_ATTR` is dead, or,
    when no lease of the run owns it, once it is older than the longest grace period of
    the run's leases. On RDB storages with a heartbeat, Optuna's
    :func:`~optuna.storages.fail_stale_trials` runs first (its retry is Optuna's
    callback), and trials of processes on other hosts are left to it: it judges them by the
    database's clock, not by clocks of different machines. Untagged trials younger than
    ``min_age`` seconds are skipped (their worker may not have tagged them yet), and
    trials of live processes are never touched. Leases of dead processes are closed too
    (by a reap that finds some trial RUNNING: without one, nothing else is read).
    ``mine``: this process's lease id, whose RUNNING trials are left over from an
    interrupted search of this same process (call it only when none is being evaluated).

    Returns:
        The numbers of the trials this call marked FAIL.
    """
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled

    state = optuna.trial.TrialState
    storage = study._storage
    reaped: list[int] = []
    heartbeat = is_heartbeat_enabled(storage)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == state.RUNNING for t in trials):
        # Nothing to judge (a run's first reap, mostly): no heartbeat or lease is read.
        # Leases of dead processes are then closed by a later reap.
        return reaped
    # Optuna's own check first, when its heartbeat says some trial is stale (asked first, as
    # one query, so a reap that finds nothing reads the study only once).
    if heartbeat and storage._get_stale_trial_ids(study._study_id):
        before = {t.number for t in trials if t.state == state.FAIL}
        with quiet_optuna():
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        # New FAILs without an error of panther's are the stale ones (others are claims that
        # workers gave up meanwhile); two workers reaping at once may both count one.
        reaped.extend(sorted(t.number for t in trials if t.state == state.FAIL
                             and t.number not in before and "panther_error" not in t.user_attrs))
    leases = {lease.id: lease for lease in _leases(storage, run_name)}
    now = time.time()
    alive = {key: lease_alive(lease, now) for key, lease in leases.items()}
    grace = max([lease.grace for lease in leases.values()], default=30.0)
    host = socket.gethostname()
    for trial in (t for t in trials if t.state == state.RUNNING):
        age = (now - trial.datetime_start.timestamp()) if trial.datetime_start else float("inf")
        owner = trial.system_attrs.get(OWNER_ATTR)
        if isinstance(owner, str):
            owner = owner.removesuffix(WAITING_SUFFIX)
        # A trial just asked may not carry its worker's tag yet (or still carry the dead
        # worker's tag copied by Optuna's retry callback): give its worker a moment.
        if age < min_age and (owner is None or "failed_trial" in trial.system_attrs):
            continue
        lease = leases.get(owner)
        if owner is not None and owner == mine:
            pass  # left RUNNING by an interrupted search of this process
        elif lease is not None:
            if alive[lease.id] or (heartbeat and lease.host != host):
                continue
        elif age < grace:
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, state.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process reaped (or the owner finished) it first
        reaped.append(trial.number)
        if retry and trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: trial.number})
    for key, lease in leases.items():
        if lease.state == "RUNNING" and not alive[key]:
            try:
                storage.set_trial_state_values(lease.trial_id, state.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
    return reaped
