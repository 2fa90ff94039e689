"""Writing a worker's own trials straight to Optuna's database tables (for
:class:`~panther.tuner.storage_view.ProcessStorage`).

Optuna's RDB storage writes through its ORM: each write first loads the trial's row, then
looks for the row it is about to write (to insert or update it), and each step costs a
round trip and CPU for the ORM objects. A worker's trial (created, its parameters and
first heartbeat, its claim, its result and end) took 24 statements on PostgreSQL that way.
:class:`RDBWriter` writes the same rows with SQLAlchemy Core on Optuna's own table
definitions, with upserts on the unique keys Optuna's schema already has, so a trial
takes about half the statements, and the CPU of building ORM objects is gone. On
PostgreSQL through psycopg2 each of those writes is also one message to the server: the
creation and a batch (parameters and first heartbeat; a result and the trial's end) carry
their own ``BEGIN`` and ``COMMIT`` with their checks inside, and a claim or a beat runs in
the driver's autocommit mode, so a trial's writes take 4 round trips (the driver would
otherwise add a ``BEGIN`` and a ``COMMIT`` round trip to each transaction, and one per row
of a many-row upsert).

What stays Optuna's:

* **The rows.** The same tables, columns and values (Optuna's conversions for dates,
  infinite values and distributions); the tests read the result back with Optuna's own
  storage and compare it, field by field, with what Optuna writes.
* **Trial numbers.** Optuna locks the study's row to number a new trial (the number is the
  count of the study's earlier trials); :meth:`RDBWriter.create_trial` takes the same lock,
  so numbers stay unique when Optuna's writers and these write to one study at once.
* **The checks.** A write to a finished trial is refused with Optuna's
  ``UpdateFinishedTrialError`` (an end changes only a trial not yet finished, under the
  row lock its update takes, as Optuna's state change locks it), a missing trial with its
  ``KeyError``, a parameter whose distribution differs from the
  study's earlier one with its ``ValueError``.

Anything the writer does not cover (trials made from a template with parameters or values,
databases other than PostgreSQL and SQLite, a conflict on a unique key) is written by
Optuna as before.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
from collections.abc import Sequence
from typing import Any

from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from panther.tuner.storage_reader import autocommit

__all__ = ["RDBWriter", "WRITER_DIALECTS", "WriterRDBStorage"]

#: Databases :class:`RDBWriter` writes to directly (others are written by Optuna).
WRITER_DIALECTS = ("postgresql", "sqlite")


class RDBWriter:
    """Writes a process's own trials to Optuna's database tables without its ORM.

    Args:
        rdb: the ``optuna.storages.RDBStorage`` whose tables to write (its engine is used).

    Raises:
        ValueError: when the database is not one of :data:`WRITER_DIALECTS`, or cannot
            return inserted rows (``INSERT ... RETURNING``).
    """

    def __init__(self, rdb: Any) -> None:
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        engine = rdb.engine
        if engine.name not in WRITER_DIALECTS or not engine.dialect.insert_returning:
            raise ValueError(f"RDBWriter writes to {', '.join(WRITER_DIALECTS)} "
                             f"(with INSERT ... RETURNING), not to {engine.name}")
        if engine.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert_into
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert_into
        self._sa = sa
        self._rdb = rdb
        self._engine = engine
        self._models = models
        t = models.TrialModel.__table__
        studies = models.StudyModel.__table__
        params = models.TrialParamModel.__table__
        # Optuna's trial model converts dates to what it stores (naive UTC in Optuna 5,
        # local time before): let one transient model object convert them, through the
        # attributes it maps to the columns.
        mapper = sa.inspect(models.TrialModel)
        self._date_keys = [mapper.get_property_by_column(t.c[name]).key
                           for name in ("datetime_start", "datetime_complete")]
        self._dates = models.TrialModel()
        self._dates_lock = threading.Lock()
        # The statements are built once, with bound parameters.
        self._lock_study = (sa.select(studies.c.study_id)
                            .where(studies.c.study_id == sa.bindparam("study"))
                            .with_for_update())
        past = (sa.select(sa.func.count(t.c.trial_id))
                .where(t.c.study_id == sa.bindparam("study")).scalar_subquery())
        new_trial = sa.insert(t).values(
            number=past, study_id=sa.bindparam("study"), state=sa.bindparam("state"),
            datetime_start=sa.bindparam("start"), datetime_complete=sa.bindparam("complete"))
        self._new_trial = new_trial.returning(t.c.trial_id, t.c.number)
        attr_tables = {"user": models.TrialUserAttributeModel.__table__,
                       "system": models.TrialSystemAttributeModel.__table__}
        self._insert_attr = {kind: sa.insert(table) for kind, table in attr_tables.items()}
        # On PostgreSQL through psycopg2, the lock, the inserts and the commit go to the
        # server as one message (one round trip): the study's row is locked only while the
        # server runs them, not across several round trips and this process's CPU (with
        # many workers on a busy host, a worker paused while holding the lock stalls the
        # others).
        self._one_trip: str | None = None
        if engine.name == "postgresql" and engine.driver == "psycopg2":
            dialect = engine.dialect
            quote = dialect.identifier_preparer.quote
            # The new trial's id: the value this session's insert took from the trial ids'
            # sequence (per session, so other workers' inserts do not count), taken once in
            # a subquery: compared directly, the volatile function would be evaluated row
            # by row, a scan of every trial of every study.
            new_id = (f"(SELECT currval(pg_get_serial_sequence('{t.name}', "
                      f"'{t.c.trial_id.name}')))")
            # A template's attributes, as two arrays (keys, JSON values), one row each.
            attrs = [f"INSERT INTO {quote(table.name)} ({quote('trial_id')}, {quote('key')}, "
                     f"{quote('value_json')}) SELECT {new_id}, k, v FROM "
                     f"unnest(CAST(%({kind}_keys)s AS TEXT[]), "
                     f"CAST(%({kind}_values)s AS TEXT[])) AS a(k, v)"
                     for kind, table in attr_tables.items()]
            self._one_trip = "; ".join([
                "BEGIN", str(self._lock_study.compile(dialect=dialect)),
                str(new_trial.inline().compile(dialect=dialect)), *attrs, "COMMIT",
                f"SELECT {quote(t.c.trial_id.name)}, {quote(t.c.number.name)} "
                f"FROM {quote(t.name)} WHERE {quote(t.c.trial_id.name)} = {new_id}"])
        # Read without a lock, as Optuna's own parameter and attribute writes check the
        # state: a row lock held here while the heartbeat row is written could deadlock
        # with this process's lease thread beating for the same trial (its heartbeat
        # insert checks the trial's key).
        self._trial_states = (sa.select(t.c.trial_id, t.c.study_id, t.c.state)
                              .where(t.c.trial_id.in_(sa.bindparam("ids", expanding=True))))
        unfinished = [TrialState.RUNNING, TrialState.WAITING]
        self._finish = (sa.update(t)
                        .where(t.c.trial_id == sa.bindparam("id"), t.c.state.in_(unfinished))
                        .values(state=sa.bindparam("state"),
                                datetime_complete=sa.bindparam("complete")))
        self._state_of = sa.select(t.c.state).where(t.c.trial_id == sa.bindparam("id"))
        self._study_dist = (sa.select(params.c.distribution_json)
                            .select_from(params.join(t, params.c.trial_id == t.c.trial_id))
                            .where(t.c.study_id == sa.bindparam("study"),
                                   params.c.param_name == sa.bindparam("name"))
                            .limit(1))
        self._insert_params = sa.insert(params)

        def upsert(model: Any, keys: list[str], updated: list[str]) -> Any:
            stmt = upsert_into(model.__table__)
            return stmt.on_conflict_do_update(
                index_elements=keys, set_={c: stmt.excluded[c] for c in updated})

        self._upsert_attr = {
            "user": upsert(models.TrialUserAttributeModel, ["trial_id", "key"], ["value_json"]),
            "system": upsert(models.TrialSystemAttributeModel, ["trial_id", "key"],
                             ["value_json"]),
        }
        self._upsert_value = upsert(models.TrialValueModel, ["trial_id", "objective"],
                                    ["value", "value_type"])

        def guarded(model: Any) -> Any:
            # One attribute, written only while its trial is not finished: the check and
            # the write in one statement (no row written: finished, or no such trial).
            table = model.__table__
            stmt = upsert_into(table).from_select(
                ["trial_id", "key", "value_json"],
                sa.select(t.c.trial_id, sa.bindparam("key", type_=table.c.key.type),
                          sa.bindparam("value_json", type_=table.c.value_json.type))
                .where(t.c.trial_id == sa.bindparam("id"), t.c.state.in_(unfinished)))
            return stmt.on_conflict_do_update(index_elements=["trial_id", "key"],
                                              set_={"value_json": stmt.excluded.value_json})

        self._guarded_attr = {"user": guarded(models.TrialUserAttributeModel),
                              "system": guarded(models.TrialSystemAttributeModel)}
        beats = models.TrialHeartbeatModel.__table__
        # The database's clock, as Optuna's heartbeat and its stale-trial check use.
        beat = upsert_into(beats).values(trial_id=sa.bindparam("trial_id"),
                                         heartbeat=sa.func.current_timestamp())
        self._upsert_beat = beat.on_conflict_do_update(
            index_elements=["trial_id"], set_={"heartbeat": sa.func.current_timestamp()})
        study_attrs = models.StudyUserAttributeModel.__table__
        self._study_attr_once = upsert_into(study_attrs).on_conflict_do_nothing(
            index_elements=["study_id", "key"])
        # The study (no row: no such study; SQLite does not enforce the foreign key) and
        # its stored value for the key.
        self._study_attr = (sa.select(studies.c.study_id, study_attrs.c.value_json)
                            .select_from(studies.outerjoin(study_attrs, sa.and_(
                                study_attrs.c.study_id == studies.c.study_id,
                                study_attrs.c.key == sa.bindparam("key"))))
                            .where(studies.c.study_id == sa.bindparam("study")))
        # On psycopg2 both go in one message (one round trip): the server runs them as one
        # implicit transaction, and the read, a statement after the insert, sees the row
        # that a concurrent insert of the same key (which this one waited for) committed.
        self._attr_once_trip: str | None = None
        if self._one_trip is not None:
            dialect = engine.dialect
            insert = self._study_attr_once.compile(dialect=dialect,
                                                   column_keys=["study_id", "key", "value_json"])
            self._attr_once_trip = f"{insert}; {self._study_attr.compile(dialect=dialect)}"
        # (study id, parameter name) -> the distribution the study has for it
        self._dists: dict[tuple[int, str], Any] = {}
        self._study_of: dict[int, int] = {}  # trials this writer created -> their study
        # On psycopg2 a batch goes to the server as one message too: BEGIN, its statements
        # and COMMIT (psycopg2 would send BEGIN and COMMIT as round trips of their own, and
        # each row of a many-row upsert as another). The checks are statements of the
        # message that fail (a division by zero) when a trial is finished or missing; the
        # block is then rolled back and the trial's state read to raise Optuna's error.
        self._batch_sql: dict[str, str] | None = None
        if self._one_trip is not None:
            dialect = engine.dialect
            quote = dialect.identifier_preparer.quote
            tid, state = quote(t.c.trial_id.name), quote(t.c.state.name)
            open_states = ", ".join(f"'{s.name}'" for s in unfinished)

            def compiled(stmt: Any, keys: list[str] | None = None) -> str:
                return str(stmt.compile(dialect=dialect, column_keys=keys))

            self._batch_sql = {
                # No trial of the study has the parameter with another distribution: a
                # parameter new to this process needs no read first. Anything else fails
                # (a text that is no integer: SQLSTATE 22P02, told apart from the checks'
                # 22012) and the batch goes the checked way, which tells compatible from
                # incompatible as Optuna does.
                "dist": (f"SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM {quote(params.name)} "
                         f"JOIN {quote(t.name)} ON "
                         f"{quote(params.name)}.{quote(params.c.trial_id.name)} = "
                         f"{quote(t.name)}.{tid} WHERE {quote(t.name)}.{quote(t.c.study_id.name)}"
                         f" = %(study)s AND {quote(params.c.param_name.name)} = %(name)s AND "
                         f"{quote(params.c.distribution_json.name)} <> %(dist)s) "
                         "THEN 'another distribution' ELSE '1' END AS INTEGER)"),
                # Every trial in %(ids)s exists and is unfinished (%(n)s of them).
                "check": (f"SELECT 1 / (CASE WHEN (SELECT count(*) FROM {quote(t.name)} "
                          f"WHERE {tid} IN %(ids)s AND {state} IN ({open_states})) = %(n)s "
                          "THEN 1 ELSE 0 END)"),
                # The trial ends only if unfinished (and its row stays locked till COMMIT).
                "finish": (f"WITH changed AS (UPDATE {quote(t.name)} SET {state} = %(state)s, "
                           f"{quote(t.c.datetime_complete.name)} = %(complete)s WHERE "
                           f"{tid} = %(id)s AND {state} IN ({open_states}) RETURNING {tid}) "
                           "SELECT 1 / (SELECT count(*) FROM changed)"),
                "param": compiled(self._insert_params, ["trial_id", "param_name",
                                                        "param_value", "distribution_json"]),
                **{f"attr:{kind}": compiled(stmt, ["trial_id", "key", "value_json"])
                   for kind, stmt in self._upsert_attr.items()},
                "beat": compiled(self._upsert_beat),
                "value": compiled(self._upsert_value, ["trial_id", "objective", "value",
                                                       "value_type"]),
            }

    # ------------------------------------------------------------------ helpers
    def _stored(self, which: int, when: datetime.datetime | None) -> tuple[Any, Any]:
        """A start (0) or end (1) date as Optuna's trial model returns it and stores it."""
        if when is None:
            return None, None
        key = self._date_keys[which]
        name = ("datetime_start", "datetime_complete")[which]
        with self._dates_lock:
            setattr(self._dates, name, when)
            return getattr(self._dates, name), getattr(self._dates, key)

    def _internal_error(self, exc: Exception) -> Exception:
        error = StorageInternalError("An exception is raised during the commit: "
                                     f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    # ------------------------------------------------------------------ create
    @staticmethod
    def takes(template: FrozenTrial | None) -> bool:
        """Whether :meth:`create_trial` creates a trial from ``template`` (``None``: a new
        RUNNING trial). Templates with parameters or values (checked against the study's
        distributions, stored in their own tables) are left to Optuna; those with
        attributes only (panther's leases, Optuna's enqueued trials) are taken."""
        return template is None or (not template.params and template.values is None
                                    and not template.intermediate_values)

    def create_trial(self, study_id: int, template: FrozenTrial | None = None) -> FrozenTrial:
        """Create a trial in the study, numbered as Optuna numbers it: a RUNNING one, or
        one like ``template`` (its state, dates and attributes; see :meth:`takes`).

        Raises:
            KeyError: no such study (Optuna's message).
            ValueError: a template :meth:`takes` refuses.
        """
        if not self.takes(template):
            raise ValueError("RDBWriter creates trials from templates without parameters "
                             "or values; Optuna creates the others")
        if template is None:
            start, stored_start = self._stored(0, datetime.datetime.now())
            state, stored_complete, attrs = TrialState.RUNNING, None, {"user": {}, "system": {}}
        else:
            start, stored_start = self._stored(0, template.datetime_start)
            stored_complete = self._stored(1, template.datetime_complete)[1]
            state = template.state
            attrs = {"user": template.user_attrs, "system": template.system_attrs}
        row = {"study": study_id, "state": state, "start": stored_start,
               "complete": stored_complete}
        texts = {kind: {key: json.dumps(value) for key, value in found.items()}
                 for kind, found in attrs.items()}
        sa = self._sa
        try:
            if self._one_trip is not None:
                trial_id, number = self._create_in_one_trip(row, texts)
            else:
                trial_id, number = self._create(row, texts)
        except sa.exc.SQLAlchemyError as exc:
            raise self._internal_error(exc) from exc
        self._study_of[trial_id] = study_id
        if template is not None:  # as Optuna returns it: the template, numbered
            frozen = copy.deepcopy(template)
            frozen.number, frozen.datetime_start, frozen._trial_id = number, start, trial_id
            return frozen
        return FrozenTrial(number=number, state=TrialState.RUNNING, value=None, values=None,
                           datetime_start=start, datetime_complete=None, params={},
                           distributions={}, user_attrs={}, system_attrs={},
                           intermediate_values={}, trial_id=trial_id)

    def _create(self, row: dict[str, Any], texts: dict[str, dict[str, str]]) -> tuple[int, int]:
        with self._engine.begin() as conn:
            # The study's row stays locked until the commit: the count below then sees
            # every trial created before this one, by any process.
            if conn.execute(self._lock_study, {"study": row["study"]}).first() is None:
                raise KeyError(f"No study with study_id {row['study']} exists.")
            trial_id, number = conn.execute(self._new_trial, row).one()
            for kind, found in texts.items():
                if found:
                    conn.execute(self._insert_attr[kind], [
                        {"trial_id": trial_id, "key": key, "value_json": text}
                        for key, text in found.items()])
        return trial_id, number

    def _create_in_one_trip(self, row: dict[str, Any],
                            texts: dict[str, dict[str, str]]) -> tuple[int, int]:
        sa = self._sa
        params = {**row, "state": row["state"].name}  # the driver's own values: no SQLAlchemy types
        for kind, found in texts.items():
            params[f"{kind}_keys"], params[f"{kind}_values"] = list(found), list(found.values())
        with autocommit(self._engine) as conn:
            # The statements carry their own BEGIN and COMMIT: the driver must not open a
            # transaction around them.
            try:
                found_row = conn.exec_driver_sql(self._one_trip, params).one()
            except sa.exc.DBAPIError as exc:
                # An error skips the rest of the message and leaves the block open.
                _end_block(conn)
                if isinstance(exc, sa.exc.IntegrityError):  # no such study (its foreign key)
                    raise KeyError(f"No study with study_id {row['study']} exists.") from exc
                raise
        return found_row[0], found_row[1]

    # ------------------------------------------------------------------ write
    def write(self, ops: Sequence[tuple[Any, ...]],
              finish: tuple[int, TrialState, Sequence[float] | None] | None = None) -> bool:
        """Write ``ops`` (and end the trial ``finish`` names) in one transaction.

        Args:
            ops: ``("param", trial_id, name, internal_value, distribution)``,
                ``("user" | "system", trial_id, key, value)`` or ``("beat", trial_id)``.
            finish: ``(trial_id, state, values)``: a finishing state, written last with its
                values and end time, as Optuna's ``set_trial_state_values`` does.

        Returns:
            False, with nothing written, on a conflict with a unique key (a parameter
            written twice): the caller writes one by one through Optuna, which settles it
            as Optuna does.

        Raises:
            UpdateFinishedTrialError: a parameter, attribute or end for a finished trial.
            KeyError: no such trial.
            ValueError: a parameter's distribution differs from the study's.
        """
        from optuna import distributions

        sa = self._sa
        if finish is None and len(ops) == 1 and ops[0][0] in self._guarded_attr:
            return self._write_attr(*ops[0])  # a claim, a lease's beat: one statement
        ended = finish[0] if finish is not None else None
        # Heartbeats need no check (Optuna's record_heartbeat writes without one); the
        # trial that ends is checked by its state change, unless a parameter needs its study.
        checked = {op[1] for op in ops if op[0] != "beat"
                   and (op[1] != ended or op[0] == "param")}
        # A lone heartbeat is one statement: it commits on its own (no BEGIN and COMMIT).
        alone = finish is None and not checked and len(ops) == 1
        if not alone and self._batch_sql is not None:
            message = self._one_message(ops, finish, checked)
            if message is not None:
                ended_id = [] if finish is None else [finish[0]]
                written = self._write_in_one_trip([*sorted(checked), *ended_id], ended_id,
                                                  *message)
                if written is not None:
                    return written
                # A parameter the study has with another distribution: the checked way
        try:
            with autocommit(self._engine) if alone else self._engine.begin() as conn:
                study_of: dict[int, int] = {}
                if checked:
                    rows = conn.execute(self._trial_states, {"ids": sorted(checked)}).all()
                    found = {row[0]: row for row in rows}
                    for trial_id in sorted(checked):
                        if trial_id not in found:
                            raise KeyError(f"No trial with trial_id {trial_id} exists.")
                        self._rdb.check_trial_is_updatable(trial_id, found[trial_id][2])
                        study_of[trial_id] = found[trial_id][1]
                if finish is not None:
                    # Checked and locked by the change itself: only a trial not yet
                    # finished changes (its row stays locked until the commit).
                    trial_id, state, values = finish
                    _, complete = self._stored(1, datetime.datetime.now())
                    changed = conn.execute(self._finish, {"id": trial_id, "state": state,
                                                          "complete": complete}).rowcount
                    if changed != 1:
                        self._refuse(conn, trial_id)
                params, attrs, beats = [], {"user": [], "system": []}, []
                for kind, trial_id, *rest in ops:
                    if kind == "param":
                        name, value, dist = rest
                        self._check_distribution(conn, study_of[trial_id], name, dist)
                        params.append({"trial_id": trial_id, "param_name": name,
                                       "param_value": value,
                                       "distribution_json": distributions.distribution_to_json(
                                           dist)})
                    elif kind in attrs:
                        key, value = rest
                        attrs[kind].append({"trial_id": trial_id, "key": key,
                                            "value_json": json.dumps(value)})
                    else:
                        beats.append({"trial_id": trial_id})
                if params:
                    conn.execute(self._insert_params, params)
                for kind, rows in attrs.items():
                    if rows:
                        # One row per key: the last write of a key wins, as one by one.
                        last = {(r["trial_id"], r["key"]): r for r in rows}
                        conn.execute(self._upsert_attr[kind], list(last.values()))
                for row in {b["trial_id"]: b for b in beats}.values():
                    conn.execute(self._upsert_beat, row)
                if finish is not None and finish[2]:
                    stored = self._models.TrialValueModel.value_to_stored_repr
                    conn.execute(self._upsert_value, [
                        {"trial_id": finish[0], "objective": k, "value": number,
                         "value_type": kind}
                        for k, (number, kind) in enumerate(stored(float(v)) for v in finish[2])])
        except sa.exc.IntegrityError:
            return False
        except sa.exc.SQLAlchemyError as exc:
            raise self._internal_error(exc) from exc
        for kind, trial_id, *rest in ops:  # remembered only once they are stored
            if kind == "param":
                self._dists.setdefault((study_of[trial_id], rest[0]), rest[2])
        return True

    def _one_message(self, ops: Sequence[tuple[Any, ...]],
                     finish: tuple[int, TrialState, Sequence[float] | None] | None,
                     checked: set[int]) -> tuple[str, dict[str, Any], list[Any]] | None:
        """The batch as one message (SQL text, parameters), or ``None`` when a parameter's
        study is not known here, or its distribution differs from the one this process has
        seen in the study (the checked way raises Optuna's error, or settles it).

        A parameter whose study's distribution this process has not seen yet is guarded
        in the message (``dist``): it goes through when the study has no other one.
        """
        import re

        from optuna import distributions

        sql = self._batch_sql
        assert sql is not None
        parts, values = ["BEGIN"], {}

        def add(kind: str, row: dict[str, Any]) -> None:
            # Each statement's placeholders get the statement's number: one namespace.
            n = len(parts)
            parts.append(re.sub(r"%\((\w+)\)s", rf"%(\1_{n})s", sql[kind]))
            values.update({f"{key}_{n}": value for key, value in row.items()})

        new: list[tuple[int, str, Any]] = []  # parameters new here: (study, name, dist)
        for kind, trial_id, *rest in ops:
            if kind == "param":
                study = self._study_of.get(trial_id)
                if study is None:
                    return None
                if (study, rest[0]) not in self._dists:
                    new.append((study, rest[0], rest[2]))
                    continue
                try:
                    distributions.check_distribution_compatibility(
                        self._dists[(study, rest[0])], rest[2])
                except ValueError:
                    return None  # refused by the other path, after the trial's own checks
        if checked:
            add("check", {"ids": tuple(sorted(checked)), "n": len(checked)})
        for study, name, dist in new:
            add("dist", {"study": study, "name": name,
                         "dist": distributions.distribution_to_json(dist)})
        if finish is not None:
            add("finish", {"id": finish[0], "state": finish[1].name,
                           "complete": self._stored(1, datetime.datetime.now())[1]})
        last: dict[tuple[str, int, str], dict[str, Any]] = {}  # the last write of a key wins
        beats: list[int] = []
        for kind, trial_id, *rest in ops:
            if kind == "param":
                name, value, dist = rest
                add("param", {"trial_id": trial_id, "param_name": name, "param_value": value,
                              "distribution_json": distributions.distribution_to_json(dist)})
            elif kind in ("user", "system"):
                last[(kind, trial_id, rest[0])] = {"trial_id": trial_id, "key": rest[0],
                                                   "value_json": json.dumps(rest[1])}
            elif trial_id not in beats:
                beats.append(trial_id)
        for (kind, _, _), row in last.items():
            add(f"attr:{kind}", row)
        for trial_id in beats:
            add("beat", {"trial_id": trial_id})
        if finish is not None and finish[2]:
            stored = self._models.TrialValueModel.value_to_stored_repr
            for k, (number, vtype) in enumerate(stored(float(v)) for v in finish[2]):
                add("value", {"trial_id": finish[0], "objective": k, "value": number,
                              "value_type": vtype.name})
        parts.append("COMMIT")
        return "; ".join(parts), values, new

    def _write_in_one_trip(self, guarded: list[int], ended: list[int], text: str,
                           values: dict[str, Any],
                           new: list[tuple[int, str, Any]]) -> bool | None:
        """Send a message of :meth:`_one_message`; ``guarded``: the trials its checks
        cover, in their order; ``ended``: the trial it ends (if any); ``new``: the
        parameters it guards, remembered once written.

        Returns :meth:`write`'s answer, or ``None`` (nothing written) when a guarded
        parameter has another distribution in the study: the checked way decides.
        """
        sa = self._sa
        with autocommit(self._engine) as conn:
            try:
                conn.exec_driver_sql(text, values)
            except sa.exc.DBAPIError as exc:
                # An error skips the rest of the message and leaves the block open.
                if not _end_block(conn):
                    raise self._internal_error(exc) from exc
                if isinstance(exc, sa.exc.IntegrityError):
                    return False  # a unique key: settled one by one through Optuna
                if getattr(exc.orig, "pgcode", None) == "22P02" and new:
                    return None  # a parameter's distribution differs: see write()
                if getattr(exc.orig, "pgcode", None) == "22012":  # a check failed
                    try:
                        for trial_id in guarded:
                            self._check_updatable(conn, trial_id)
                    except sa.exc.SQLAlchemyError as again:
                        raise self._internal_error(again) from again
                raise self._internal_error(exc) from exc
            except sa.exc.SQLAlchemyError as exc:
                raise self._internal_error(exc) from exc
        for trial_id in ended:
            self._study_of.pop(trial_id, None)  # finished: written no more
        for study, name, dist in new:  # the study has no other: compatible from now on
            self._dists.setdefault((study, name), dist)
        return True

    def _write_attr(self, kind: str, trial_id: int, key: str, value: Any) -> bool:
        sa = self._sa
        try:
            # One statement: it commits on its own (no BEGIN and COMMIT round trips).
            with autocommit(self._engine) as conn:
                written = conn.execute(self._guarded_attr[kind], {
                    "id": trial_id, "key": key, "value_json": json.dumps(value)}).rowcount
                if written != 1:
                    self._refuse(conn, trial_id)
        except sa.exc.IntegrityError:
            return False
        except sa.exc.SQLAlchemyError as exc:
            raise self._internal_error(exc) from exc
        return True

    def study_attr_once(self, study_id: int, key: str, value: Any) -> Any:
        """Store a study's user attribute unless it is stored already; return the stored one.

        Of several processes recording the same key at once, the first one's value stays
        (Optuna's ``set_study_user_attr`` would let the last one overwrite it), and every
        one of them gets it back.

        Raises:
            KeyError: no such study (Optuna's message).
        """
        sa = self._sa
        row_values = {"study_id": study_id, "key": key, "value_json": json.dumps(value)}
        try:
            # The read, a statement after the insert, sees what is stored: the insert's row,
            # or the row of a concurrent insert of the key that this one waited for.
            with autocommit(self._engine) as conn:
                if self._attr_once_trip is not None:
                    row = conn.exec_driver_sql(self._attr_once_trip,
                                               {**row_values, "study": study_id}).first()
                else:
                    conn.execute(self._study_attr_once, row_values)
                    # The stored one: this insert's, or the earlier one it left in place.
                    row = conn.execute(self._study_attr, {"study": study_id, "key": key}).first()
                if row is None:  # rolled back with the insert
                    raise KeyError(f"No study with study_id {study_id} exists.")
                text = row[1]
        except sa.exc.IntegrityError as exc:  # the study's foreign key
            raise KeyError(f"No study with study_id {study_id} exists.") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise self._internal_error(exc) from exc
        return json.loads(text)

    def _check_updatable(self, conn: Any, trial_id: int) -> TrialState:
        """Raise what Optuna raises for a write to a trial that is not there or finished;
        return the state of one that is not."""
        row = conn.execute(self._state_of, {"id": trial_id}).first()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        self._rdb.check_trial_is_updatable(trial_id, row[0])
        return row[0]

    def _refuse(self, conn: Any, trial_id: int) -> None:
        """Raise what Optuna raises for a write to a trial that is not there or finished."""
        state = self._check_updatable(conn, trial_id)
        raise RuntimeError(f"trial {trial_id} in state {state} was not written")

    def _check_distribution(self, conn: Any, study_id: int, name: str, dist: Any) -> None:
        """Optuna's check: a parameter keeps a compatible distribution across a study."""
        from optuna import distributions

        previous = self._dists.get((study_id, name))
        if previous is None:
            text = conn.execute(self._study_dist, {"study": study_id, "name": name}).scalar()
            if text is None:
                return
            previous = self._dists[(study_id, name)] = distributions.json_to_distribution(text)
        distributions.check_distribution_compatibility(previous, dist)


def _end_block(conn: Any) -> bool:
    """Roll back the block a failed one-message transaction left open; False (and the
    connection dropped from the pool) when the connection itself is gone."""
    from sqlalchemy.exc import SQLAlchemyError

    if conn.invalidated:  # lost with the error: the server ended the block with it
        return False
    try:
        conn.exec_driver_sql("ROLLBACK")
    except SQLAlchemyError:
        conn.invalidate()
        return False
    return True


class WriterRDBStorage(RDBStorage):
    """Optuna's RDB storage, creating trials with :class:`RDBWriter` where it can.

    Everything else is Optuna's. A trial from a template with parameters or values (see
    :meth:`RDBWriter.takes`), a database :class:`RDBWriter` does not write, or a creation
    the database refused (a deadlock or timeout, which Optuna retries) is created by Optuna.
    """

    _writer: RDBWriter | None | bool = False  # False: not built yet

    @property
    def writer(self) -> RDBWriter | None:
        """The writer for this storage's database (``None``: Optuna writes it all)."""
        if self._writer is False:
            try:
                self._writer = RDBWriter(self)
            except ValueError:
                self._writer = None
        return self._writer  # type: ignore[return-value]

    def _create_new_trial(self, study_id: int,
                          template_trial: FrozenTrial | None = None) -> FrozenTrial:
        writer = self.writer
        if writer is not None and writer.takes(template_trial):
            try:
                return writer.create_trial(study_id, template_trial)
            except StorageInternalError:
                pass  # rolled back: Optuna's own creation, with its retries
        return super()._create_new_trial(study_id, template_trial)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_writer", None)  # holds the engine: rebuilt after unpickling
        return state
