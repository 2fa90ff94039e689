"""One process's view of a shared Optuna storage: fewer round trips per trial.

Workers share a run through Optuna's storage, and on a database every storage call is a
transaction of several SQL statements. Measured on PostgreSQL (``benchmarks/
bench_parallel.py``), a worker sent about 55 statements in 14 transactions per trial
(each also testing its connection first), most of them reads of data the worker already
had; with this view (and connections tested only after sitting idle, see
:func:`~panther.tuner.storage.open_storage`), 4 messages to the server (on psycopg2: see
:mod:`~panther.tuner.storage_writer` and :func:`~panther.tuner.storage_reader.autocommit`),
plus a read of the study in two statements.
:class:`ProcessStorage` wraps the storage :func:`open_storage
<panther.tuner.storage.open_storage>` builds and sends fewer, with the same results:

* **Own running trials from memory.** A RUNNING trial is written only by the process
  that runs it (created RUNNING here, or an enqueued retry moved to RUNNING here).
  ``Study.ask`` reads the trial it has just created, ``Study.tell`` reads it twice more;
  this process answers those reads from its copy, kept up to date with its own writes,
  which still all go to the storage first. The one thing another process may change on
  such a trial is its state (a worker that takes it for a dead one's marks it FAIL); this
  process's next write to it is then refused by the storage
  (``UpdateFinishedTrialError``), as without the copy.
* **Direct reads.** A study's trials are read with two statements on Optuna's own table
  definitions (:class:`~panther.tuner.storage_reader.RDBReader`) instead of Optuna's ORM objects, and, like Optuna's
  own cache, only the trials unfinished or new since the last read are read again; a read
  is compared with Optuna's in the tests, field by field.
* **Direct writes.** On PostgreSQL and SQLite, this process's own trials are written
  straight to Optuna's tables (:class:`~panther.tuner.storage_writer.RDBWriter`: the rows
  Optuna writes, with fewer statements; elsewhere, and for anything it does not cover,
  through Optuna's own per-write helpers).
* **Batches** (:meth:`ProcessStorage.write_batch`): a new trial's parameters and first
  heartbeat go in one transaction, and a result's attributes with the trial's end in
  another, before anything the process does next (on psycopg2, each one message).
* **Studies remembered.** A study's id (by name) and directions never change: they are
  read once.
* **Reads reused on request** (:meth:`ProcessStorage.last_read`): where a step would read
  what it read a moment ago (Optuna's ask looking for WAITING trials right after the
  worker's own read).

It also counts the time spent in the storage (per thread: :meth:`ProcessStorage.seconds`),
which :class:`~panther.tuner.worker.WorkerReport` reports as ``storage_s``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import threading
import time
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from panther.tuner.storage_reader import READER_DIALECTS, RDBReader
from panther.tuner.storage_writer import RDBWriter, WriterRDBStorage

__all__ = ["ProcessStorage", "last_read", "study_attr_once", "write_batch"]

def _has_batch_helpers() -> bool:
    """Whether this Optuna's database storage has the per-write helpers that
    :meth:`ProcessStorage.write_batch` runs in one transaction, with the arguments it
    passes (earlier Optuna 4 releases have others: their writes go one by one)."""
    import inspect

    from optuna.storages import RDBStorage

    try:
        param = inspect.signature(RDBStorage._set_trial_param_without_commit).parameters
        attr = inspect.signature(RDBStorage._set_trial_attr_without_commit).parameters
        value = inspect.signature(RDBStorage._set_trial_value_without_commit).parameters
    except AttributeError:
        return False
    return ("previous_distribution" in param and "model_cls" in attr
            and list(value)[1:4] == ["session", "trial", "objective"])


_BATCH_HELPERS = _has_batch_helpers()


class ProcessStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage that serves this process's RUNNING trials from memory.

    Args:
        inner: the storage to wrap (an ``RDBStorage`` is wrapped in Optuna's own
            ``_CachedStorage`` first, as ``optuna.create_study`` would, so finished trials
            are cached too).

    Use it wherever Optuna takes a storage (``optuna.load_study(storage=...)``); the
    heartbeat (RDB storages) is the wrapped storage's.
    """

    def __init__(self, inner: BaseStorage) -> None:
        from optuna.storages import RDBStorage, get_storage

        self._inner = get_storage(inner) if isinstance(inner, RDBStorage) else inner
        self._rdb = inner if isinstance(inner, RDBStorage) else None
        self._reader: RDBReader | None = None
        if isinstance(inner, RDBStorage) and inner.engine.name in READER_DIALECTS:
            try:
                self._reader = RDBReader(inner)
            except Exception:  # noqa: BLE001 -- another Optuna's models: read through Optuna
                self._reader = None
        # Writes of this process's own trials, straight to the tables (see storage_writer).
        self._writer: RDBWriter | None = (inner.writer if isinstance(inner, WriterRDBStorage)
                                          else None)
        self._lock = threading.RLock()
        # trial id -> this process's copy (None until first read from the storage)
        self._own: dict[int, FrozenTrial | None] = {}
        # the trial this process finished last, as it finished it (its end time is this
        # machine's clock): Optuna's tell reads it back right away
        self._finished: tuple[int, FrozenTrial] | None = None
        self._clock = threading.local()
        self._last: dict[int, list[FrozenTrial]] = {}  # study id -> its trials, as last read
        self._study_ids: dict[str, int] = {}  # study name -> id
        self._directions: dict[int, list[StudyDirection]] = {}  # study id -> its directions

    # ------------------------------------------------------------------ accounting
    def seconds(self) -> float:
        """Seconds the calling thread has spent in calls to the wrapped storage."""
        return getattr(self._clock, "seconds", 0.0)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if getattr(self._clock, "queue", None):
            self._flush()  # this thread's batched writes go first, in order
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._clock.seconds = self.seconds() + time.perf_counter() - start

    # ------------------------------------------------------------------ batched writes
    @contextlib.contextmanager
    def write_batch(self) -> Iterator[None]:
        """Within this block, this thread's writes of parameters, attributes and heartbeats
        of the trials it runs are sent together, in one transaction on a database.

        They are sent when the block ends, or before this thread's next other call to the
        storage (a read, a state change...), so they are always written, in order, before
        anything this process does next is seen by others; only the round trips are
        fewer (about half a dozen per trial on PostgreSQL). When one transaction cannot
        take them (another Optuna, a conflict), they are sent one by one as without it.
        """
        outer = getattr(self._clock, "queue", None)
        if outer is not None:  # nested: the outer block sends them
            yield
            return
        self._clock.queue = []
        try:
            yield
        finally:
            try:
                self._flush()
            finally:
                self._clock.queue = None

    def _queued(self, trial_id: int, op: tuple[Any, ...]) -> bool:
        """Queue ``op`` when this thread is batching and the trial is this process's; or,
        outside a batch, write it now with the direct writer. False: the caller writes it
        through the wrapped storage."""
        if trial_id not in self._own:
            return False
        queue = getattr(self._clock, "queue", None)
        if queue is not None:
            queue.append(op)
            return True
        if self._writer is None:
            return False
        start = time.perf_counter()
        try:
            if not self._writer.write([op]):
                self._send(op)  # a conflict: as Optuna settles it
        except Exception:
            self._forget([op])
            raise
        finally:
            self._clock.seconds = self.seconds() + time.perf_counter() - start
        return True

    def _flush(self) -> None:
        queue = self._clock.queue
        if not queue:
            return
        ops, queue[:] = list(queue), []
        start = time.perf_counter()
        try:
            if not self._flush_in_one(ops):
                for op in ops:
                    self._send(op)
        except Exception:
            self._forget(ops)
            raise
        finally:
            self._clock.seconds = self.seconds() + time.perf_counter() - start

    def _forget(self, ops: list[tuple[Any, ...]]) -> None:
        """Drop the copies of the trials ``ops`` wrote to: what was noted on them may not
        be stored (the next read of each asks the storage)."""
        with self._lock:
            for op in ops:
                self._own.pop(op[1], None)

    def _finish_with_batch(self, trial_id: int, state: TrialState,
                           values: Sequence[float] | None) -> bool | None:
        """Finish an own trial in one transaction with this thread's batched writes (if any).

        Returns None (nothing written) where that does not apply: a state that does not
        finish the trial, no database, or, without the direct writer, no batch or no
        Optuna helpers; the caller then writes as usual. The state change is Optuna's
        ``set_trial_state_values`` for a finishing state: lock the trial's row, check it
        is still running, store the values, the state and the end time.
        """
        queue = getattr(self._clock, "queue", None)
        if (not state.is_finished() or self._rdb is None or trial_id not in self._own
                or (self._writer is None and (not queue or not _BATCH_HELPERS))):
            return None
        ops = list(queue or ())
        if queue:
            queue[:] = []
        start = time.perf_counter()
        try:
            if self._write_in_one(ops, finish=(trial_id, state, values)):
                return True
            for op in ops:  # a conflict rolled it all back: one by one, then the state
                self._send(op)
            return None
        except Exception:
            self._forget(ops)
            raise
        finally:
            self._clock.seconds = self.seconds() + time.perf_counter() - start

    def _send(self, op: tuple[Any, ...]) -> None:
        kind, trial_id, *rest = op
        if kind == "param":
            self._inner.set_trial_param(trial_id, *rest)
        elif kind == "user":
            self._inner.set_trial_user_attr(trial_id, *rest)
        elif kind == "system":
            self._inner.set_trial_system_attr(trial_id, *rest)
        else:
            self._inner.record_heartbeat(trial_id)

    def _flush_in_one(self, ops: list[tuple[Any, ...]]) -> bool:
        """Write ``ops`` in one database transaction, with Optuna's own per-write helpers.

        Returns False (nothing written) where that is not possible: not a database, an
        Optuna without these helpers, or a conflict the one-by-one writes handle.
        """
        if self._writer is None and (self._rdb is None or not _BATCH_HELPERS or len(ops) < 2):
            return False
        return self._write_in_one(ops)

    def _write_in_one(self, ops: list[tuple[Any, ...]],
                      finish: tuple[int, TrialState, Sequence[float] | None] | None = None
                      ) -> bool:
        if self._writer is not None:
            return self._writer.write(ops, finish)
        rdb = self._rdb
        try:
            import sqlalchemy
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            known = getattr(self._inner, "_studies", {})
            with _create_scoped_session(rdb.scoped_session) as session:
                for kind, trial_id, *rest in ops:
                    if kind == "param":
                        name, value, dist = rest
                        # The distribution this study already has for the name (Optuna's
                        # cache of it), so the check needs no query.
                        previous = next((info.param_distribution.get(name)
                                         for info in known.values()
                                         if name in info.param_distribution), None)
                        rdb._set_trial_param_without_commit(session, trial_id, name, value,
                                                            dist, previous)
                    elif kind in ("user", "system"):
                        model = (models.TrialUserAttributeModel if kind == "user"
                                 else models.TrialSystemAttributeModel)
                        rdb._set_trial_attr_without_commit(session, model, trial_id, *rest)
                    else:  # the first heartbeat of a trial (Optuna's record_heartbeat)
                        beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
                        if beat is None:
                            session.add(models.TrialHeartbeatModel(trial_id=trial_id))
                        else:
                            beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar()
                if finish is not None:
                    trial_id, state, values = finish
                    trial = models.TrialModel.find_or_raise_by_id(trial_id, session,
                                                                  for_update=True)
                    rdb.check_trial_is_updatable(trial_id, trial.state)
                    for objective, value in enumerate(values or ()):
                        rdb._set_trial_value_without_commit(session, trial, objective, value)
                    trial.state = state
                    trial.datetime_complete = datetime.datetime.now()
        except StorageInternalError as exc:
            if isinstance(exc.__cause__, sqlalchemy.exc.IntegrityError):
                return False  # rolled back: one by one, as Optuna would
            raise
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    @property
    def inner(self) -> BaseStorage:
        """The wrapped storage."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        # Anything else the wrapped storage offers (``remove_session``, RDB's ``url``...).
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    # ------------------------------------------------------------------ studies
    def create_new_study(self, directions: Sequence[StudyDirection],
                         study_name: str | None = None) -> int:
        """Create the study (and remember its name)."""
        study_id = self._call(self._inner.create_new_study, directions, study_name)
        if study_name is not None:
            self._study_ids[study_name] = study_id
        self._directions[study_id] = list(directions)
        return study_id

    def delete_study(self, study_id: int) -> None:
        """Delete the study (and forget its name)."""
        self._call(self._inner.delete_study, study_id)
        self._study_ids = {name: i for name, i in self._study_ids.items() if i != study_id}
        self._directions.pop(study_id, None)
        self._last.pop(study_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        """Pass through."""
        self._call(self._inner.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        """Pass through."""
        self._call(self._inner.set_study_system_attr, study_id, key, value)

    def study_attr_once(self, study_id: int, key: str, value: Any) -> Any:
        """Store a study's user attribute unless it is stored already; return the stored one.

        On a database (the direct writer), the first of several processes recording it at
        once keeps it, in one transaction; elsewhere (a journal file) the attribute is read,
        written when missing and read back, so two processes starting at the same moment
        may each see its own.
        """
        if self._writer is not None:
            return self._call(self._writer.study_attr_once, study_id, key, value)
        return _attr_once_by_reading(self, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        """The study's id (remembered: a name keeps its id until the study is deleted)."""
        study_id = self._study_ids.get(study_name)
        if study_id is None:
            if self._reader is None:
                study_id = self._call(self._inner.get_study_id_from_name, study_name)
            else:
                # The directions come in the same statement: load_study asks them next.
                study_id, directions = self._call(self._reader.study_id, study_name)
                if directions:  # (a study has some; without any, they are read when asked)
                    self._directions.setdefault(study_id, list(directions))
            self._study_ids[study_name] = study_id
        return study_id

    def get_study_name_from_id(self, study_id: int) -> str:
        """The study's name (from the names this process looked up or created, else read)."""
        for name, known in self._study_ids.items():
            if known == study_id:
                return name
        return self._call(self._inner.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        """The study's directions (remembered: they never change)."""
        directions = self._directions.get(study_id)
        if directions is None:
            read = self._inner.get_study_directions if self._reader is None \
                else self._reader.directions
            directions = self._call(read, study_id)
            self._directions[study_id] = list(directions)
        return list(directions)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        """Pass through."""
        return self._call(self._inner.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        """Pass through."""
        return self._call(self._inner.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        """Pass through."""
        return self._call(self._inner.get_all_studies)

    # ------------------------------------------------------------------ trials: writes
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Create the trial; a RUNNING one is this process's from now on."""
        trial_id = self._call(self._inner.create_new_trial, study_id, template_trial)
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            created = self._created(trial_id)
            with self._lock:
                self._own[trial_id] = created
        return trial_id

    def _created(self, trial_id: int) -> FrozenTrial | None:
        """The trial as the storage created it, when Optuna's cache in front of a database
        kept it (it does, as the database returned it); else ``None``: read it when needed."""
        try:
            study_id, number = self._inner._trial_id_to_study_id_and_number[trial_id]
            trial = self._inner._studies[study_id].trials[number]
        except (AttributeError, KeyError):  # a journal storage, or another Optuna's cache
            return None
        return copy.deepcopy(trial) if trial.state == TrialState.RUNNING else None

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """Write the state; a trial moved to RUNNING here becomes this process's, a finished
        one is forgotten. Inside :meth:`write_batch`, a trial of this process that finishes
        is written in one transaction with the batch (its result's attributes)."""
        try:
            changed = self._finish_with_batch(trial_id, state, values)
            if changed is None:
                changed = self._call(self._inner.set_trial_state_values, trial_id, state,
                                     values)
        except Exception:
            with self._lock:  # e.g. finished elsewhere meanwhile: the copy is wrong now
                self._own.pop(trial_id, None)
            raise
        with self._lock:
            if state.is_finished():
                mine = self._own.pop(trial_id, None)
                if mine is not None and changed:
                    # Optuna's tell reads the trial back once more to return it.
                    mine.state = state
                    mine.values = None if values is None else [float(v) for v in values]
                    mine.datetime_complete = datetime.datetime.now()
                    self._finished = (trial_id, mine)
            elif state == TrialState.RUNNING and changed:
                self._own[trial_id] = None  # read once from the storage when needed
        return changed

    def _update(self, trial_id: int, change: Callable[[FrozenTrial], None]) -> None:
        with self._lock:
            trial = self._own.get(trial_id)
            if trial is not None:
                change(trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        """Write the parameter, then note it on this process's copy."""
        if not self._queued(trial_id, ("param", trial_id, param_name, param_value_internal,
                                       distribution)):
            self._call(self._inner.set_trial_param, trial_id, param_name, param_value_internal,
                       distribution)

        def change(trial: FrozenTrial) -> None:
            trial.params[param_name] = distribution.to_external_repr(param_value_internal)
            trial.distributions[param_name] = distribution

        self._update(trial_id, change)

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        """Write the value, then note it on this process's copy."""
        self._call(self._inner.set_trial_intermediate_value, trial_id, step, intermediate_value)
        self._update(trial_id, lambda t: t.intermediate_values.__setitem__(step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Write the attribute, then note it on this process's copy."""
        if not self._queued(trial_id, ("user", trial_id, key, value)):
            self._call(self._inner.set_trial_user_attr, trial_id, key, value)
        self._update(trial_id, lambda t: t.user_attrs.__setitem__(key, copy.deepcopy(value)))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Write the attribute, then note it on this process's copy."""
        if not self._queued(trial_id, ("system", trial_id, key, value)):
            self._call(self._inner.set_trial_system_attr, trial_id, key, value)
        self._update(trial_id, lambda t: t.system_attrs.__setitem__(key, copy.deepcopy(value)))

    # ------------------------------------------------------------------ trials: reads
    def get_trial(self, trial_id: int) -> FrozenTrial:
        """This process's copy of a trial it runs (read once), else the storage's."""
        with self._lock:
            own = trial_id in self._own
            trial = self._own.get(trial_id)
            if trial is None and self._finished is not None and self._finished[0] == trial_id:
                trial = self._finished[1]
            if trial is not None:
                return copy.deepcopy(trial)  # callers (Optuna's Trial) change what they get
        reader = self._reader
        done = reader.finished(trial_id) if reader is not None else None
        if done is not None:
            return done  # finished trials never change (Optuna's own cache shares them too)
        fresh = self._call(self._inner.get_trial, trial_id)
        if own and fresh.state == TrialState.RUNNING:
            with self._lock:
                if trial_id in self._own:
                    self._own[trial_id] = copy.deepcopy(fresh)
        return fresh

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """Read the study's trials (other processes change them), except inside
        :meth:`last_read`, where the last read is answered again."""
        last = self._last.get(study_id)
        if getattr(self._clock, "reuse", False) and last is not None:
            trials = [t for t in last if states is None or t.state in states]
        else:
            trials = self._call(self._read_all, study_id)
            self._last[study_id] = trials
            if states is not None:
                trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def _read_all(self, study_id: int) -> list[FrozenTrial]:
        reader = self._reader
        if reader is not None:
            try:
                with self._lock:
                    # A study this process created or found by name exists: its first
                    # read need not check (delete_study forgets it; one that another
                    # process deletes meanwhile reads as empty instead of missing).
                    return reader.read(study_id, exists=study_id in self._study_ids.values())
            except KeyError:
                raise  # no such study: as Optuna says it
            except Exception as exc:  # noqa: BLE001 -- see RDBReader: fall back to Optuna
                self._reader = None
                warnings.warn(f"panther reads this storage through Optuna from now on: its "
                              f"fast reader failed ({type(exc).__name__}: {exc})", RuntimeWarning,
                              stacklevel=3)
        return self._inner.get_all_trials(study_id, deepcopy=False)

    @contextlib.contextmanager
    def last_read(self) -> Iterator[None]:
        """Within this block, this thread's reads of a study's trials reuse the last read.

        For a step that would only read what it read a moment ago, when a slightly older
        view is harmless: e.g. ``Study.ask`` reads the study for WAITING trials to pop
        (retries of dead workers' trials); one it misses is popped by the next ask, and one
        another process took meanwhile is refused by the storage and skipped by Optuna.
        """
        before = getattr(self._clock, "reuse", False)
        self._clock.reuse = True
        try:
            yield
        finally:
            self._clock.reuse = before

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        """Pass through."""
        return self._call(self._inner.get_trial_id_from_study_id_trial_number, study_id,
                          trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        """This process's copy, else pass through."""
        with self._lock:
            trial = self._own.get(trial_id)
            if trial is not None:
                return trial.number
        return self._call(self._inner.get_trial_number_from_id, trial_id)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """Pass through."""
        return self._call(self._inner.get_best_trial, study_id)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
                     ) -> int:
        """Pass through."""
        return self._call(self._inner.get_n_trials, study_id, state)

    def remove_session(self) -> None:
        """Pass through."""
        self._inner.remove_session()

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        """Pass through."""
        self._inner.check_trial_is_updatable(trial_id, trial_state)

    # ------------------------------------------------------------------ heartbeat
    def record_heartbeat(self, trial_id: int) -> None:
        """The wrapped storage's heartbeat (RDB storages)."""
        if not self._queued(trial_id, ("beat", trial_id)):
            self._call(self._inner.record_heartbeat, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        reader, rdb = self._reader, self._rdb
        if reader is not None and rdb is not None and rdb.heartbeat_interval is not None:
            # Optuna's default grace period: twice the interval.
            grace = rdb.grace_period if rdb.grace_period is not None else 2 * rdb.heartbeat_interval
            return self._call(reader.stale, study_id, grace)
        return self._call(self._inner._get_stale_trial_ids, study_id)

    def get_heartbeat_interval(self) -> int | None:
        """The wrapped storage's interval; ``None`` (no heartbeat) for a journal file."""
        if not isinstance(self._inner, BaseHeartbeat):
            return None
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Any:
        """The wrapped storage's callback for stale trials (``None`` without a heartbeat)."""
        if not isinstance(self._inner, BaseHeartbeat):
            return None
        # Optuna >= 4.9 names it so; earlier ones call it the failed-trial callback.
        getter = getattr(self._inner, "get_heartbeat_stale_trial_callback", None)
        return getter() if getter is not None else self._inner.get_failed_trial_callback()

    def get_failed_trial_callback(self) -> Any:
        """The same callback under its name before Optuna 4.9."""
        return self.get_heartbeat_stale_trial_callback()


def write_batch(storage: Any) -> Any:
    """:meth:`ProcessStorage.write_batch` of ``storage``; a no-op block for any other storage."""
    return storage.write_batch() if isinstance(storage, ProcessStorage) \
        else contextlib.nullcontext()


def study_attr_once(study: Any, key: str, value: Any) -> Any:
    """Record a user attribute of an Optuna ``study`` unless it has one under ``key``;
    return the stored value (see :meth:`ProcessStorage.study_attr_once`; another
    storage is read, written when missing and read back)."""
    storage = study._storage
    if isinstance(storage, ProcessStorage):
        return storage.study_attr_once(study._study_id, key, value)
    return _attr_once_by_reading(storage, study._study_id, key, value)


def _attr_once_by_reading(storage: BaseStorage, study_id: int, key: str, value: Any) -> Any:
    """Read the study's attribute, write it when missing, read it back (a storage without
    a conditional write: another process writing at the same moment may win)."""
    stored = storage.get_study_user_attrs(study_id)
    if key in stored:
        return stored[key]
    storage.set_study_user_attr(study_id, key, value)
    return storage.get_study_user_attrs(study_id).get(key, value)


def last_read(storage: Any) -> Any:
    """:meth:`ProcessStorage.last_read` of ``storage``; a no-op block for any other storage."""
    return storage.last_read() if isinstance(storage, ProcessStorage) \
        else contextlib.nullcontext()
