"""Reading a study's trials straight from Optuna's database tables (for
:class:`~panther.tuner.storage_view.ProcessStorage`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from optuna.trial import FrozenTrial, TrialState

__all__ = ["RDBReader", "READER_DIALECTS", "autocommit"]

#: Databases whose tables :class:`RDBReader` reads directly (others read through Optuna).
READER_DIALECTS = ("postgresql", "sqlite")


#: psycopg2's ``TRANSACTION_STATUS_IDLE``: no transaction open on the server.
_IDLE = 0


@contextlib.contextmanager
def autocommit(engine: Any) -> Iterator[Any]:
    """A connection of ``engine`` whose statements each commit on their own (psycopg2).

    In its default mode psycopg2 sends ``BEGIN`` before a connection's first statement, and
    SQLAlchemy ends every checkout with a ``ROLLBACK`` or ``COMMIT``: two round trips more
    around each read or one-statement write, the largest part of a trial's round trips.
    PostgreSQL's default isolation (READ COMMITTED) gives each statement its own snapshot
    inside a transaction too, so reads see the same data without one. The driver's own
    ``autocommit`` flag is switched for the checkout and back (a client-side flag: no
    round trip; SQLAlchemy's ``isolation_level="AUTOCOMMIT"`` would send a ``SET`` when
    the connection goes back to the pool). A connection that comes back with a server-side
    block still open (a message interrupted half-way) is dropped from the pool. Other
    drivers get one transaction, committed at the end.
    """
    if engine.driver != "psycopg2":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.autocommit = True
        try:
            yield conn
        finally:
            try:
                idle = raw.get_transaction_status() == _IDLE
                raw.autocommit = False
            except Exception:  # noqa: BLE001 -- a connection that broke meanwhile
                idle = False
            if not idle and not conn.invalidated:  # broken, or a block left open:
                conn.invalidate()  # the pool replaces it


class RDBReader:
    """Reads a study's trials from Optuna's database tables without its ORM.

    Optuna builds a trial from ORM objects and loads its parameters, values and attributes
    table by table: seven statements per read, and much CPU for the objects, while every
    worker reads the study once or twice per trial. This reader reads the same data with
    two statements (the trials, then their parameters, values and attributes as one union)
    with SQLAlchemy Core on Optuna's own table definitions, builds each ``FrozenTrial`` the
    way Optuna does (its conversion helpers for values and dates), and, like Optuna's cache,
    reads again only the trials that were unfinished or new at the last read. Anything
    unexpected turns it off (:class:`~panther.tuner.storage_view.ProcessStorage` then reads
    through Optuna), so a schema of another Optuna costs speed, not correctness.
    """

    def __init__(self, rdb: Any) -> None:
        import sqlalchemy
        from optuna.storages._rdb import models

        self._sa = sqlalchemy
        self._models = models
        self._engine = rdb.engine
        self._trials = models.TrialModel.__table__
        self._children = {
            "params": models.TrialParamModel.__table__,
            "values": models.TrialValueModel.__table__,
            "user": models.TrialUserAttributeModel.__table__,
            "system": models.TrialSystemAttributeModel.__table__,
            "intermediate": models.TrialIntermediateValueModel.__table__,
        }
        # Optuna's trial model turns the stored dates into local ones (how depends on the
        # version): let one transient model object do it, through the attributes it maps.
        mapper = sqlalchemy.inspect(models.TrialModel)
        self._date_keys = [mapper.get_property_by_column(self._trials.c[name]).key
                           for name in ("datetime_start", "datetime_complete")]
        self._dates = models.TrialModel()
        self._dists: dict[str, Any] = {}
        # The statements are built once (with bound parameters; lists as expanding ones):
        # building SQLAlchemy expressions on every read cost more CPU than running them.
        t = self._trials
        trials = sqlalchemy.select(
            t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete
        ).where(t.c.study_id == sqlalchemy.bindparam("study")).order_by(t.c.trial_id)
        newer = t.c.trial_id > sqlalchemy.bindparam("last")
        self._trials_newer = trials.where(newer)
        self._trials_or_unfinished = trials.where(sqlalchemy.or_(
            newer, t.c.trial_id.in_(sqlalchemy.bindparam("unfinished", expanding=True))))
        self._kinds = {"param": 1, "value": 2, "user": 3, "system": 4, "inter": 5}
        self._children_of = self._children_query()
        self._studies: dict[int, dict[str, Any]] = {}  # per study: trials, unfinished, last
        self._finished: dict[int, FrozenTrial] = {}  # trial id -> finished trial
        self._stale: Any = None  # the stale-trial statement, built on first use
        # a study's id and directions by one of its columns (see _study_rows)
        self._study_statements: dict[str, Any] = {}

    def _distribution(self, text: str) -> Any:
        from optuna import distributions

        dist = self._dists.get(text)
        if dist is None:
            dist = self._dists[text] = distributions.json_to_distribution(text)
        return dist

    def _local(self, start: Any, complete: Any) -> tuple[Any, Any]:
        setattr(self._dates, self._date_keys[0], start)
        setattr(self._dates, self._date_keys[1], complete)
        return self._dates.datetime_start, self._dates.datetime_complete

    def read(self, study_id: int, exists: bool = False) -> list[FrozenTrial]:
        """Every trial of the study, in number order (finished ones from the last reads).

        ``exists``: the caller knows the study exists (it has just created it or found it
        by name), so a first read need not check (an unknown id raises ``KeyError``, as
        Optuna's read does, otherwise).
        """
        import json

        sa, models = self._sa, self._models
        known = self._studies.get(study_id)
        with autocommit(self._engine) as conn:
            if known is None and exists:
                known = {"trials": {}, "unfinished": set(), "last": -1}
            elif known is None:
                studies = models.StudyModel.__table__
                found = conn.execute(sa.select(studies.c.study_id)
                                     .where(studies.c.study_id == study_id)).first()
                if found is None:
                    raise KeyError(f"No study with study_id {study_id} exists.")
                known = {"trials": {}, "unfinished": set(), "last": -1}
            args = {"study": study_id, "last": known["last"]}
            if known["unfinished"]:
                rows = conn.execute(self._trials_or_unfinished,
                                    {**args, "unfinished": sorted(known["unfinished"])}).all()
            else:
                rows = conn.execute(self._trials_newer, args).all()
            ids = [row[0] for row in rows]
            # Their parameters, values and attributes in one statement, as rows of one shape
            # (by the trial ids: the children tables are indexed by them).
            children = conn.execute(self._children_of, {"ids": ids}).all() if ids else []
        kinds = self._kinds
        parts: dict[int, dict[str, Any]] = {
            i: {"params": {}, "dists": {}, "values": {}, "user": {}, "system": {}, "inter": {}}
            for i in ids}
        for kind, trial_id, name, idx, num, text, vtype, _ in children:
            part = parts[trial_id]
            if kind == kinds["param"]:
                dist = self._distribution(text)
                part["params"][name] = dist.to_external_repr(num)
                part["dists"][name] = dist
            elif kind == kinds["value"]:
                part["values"][idx] = models.TrialValueModel.stored_repr_to_value(
                    num, models.TrialValueModel.TrialValueType[vtype])
            elif kind == kinds["user"]:
                part["user"][name] = json.loads(text)
            elif kind == kinds["system"]:
                part["system"][name] = json.loads(text)
            else:
                part["inter"][idx] = \
                    models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                        num, models.TrialIntermediateValueModel.TrialIntermediateValueType[vtype])
        trials = known["trials"]
        for trial_id, number, state, start, complete in rows:
            part = parts[trial_id]
            values = part["values"]
            start, complete = self._local(start, complete)
            trials[number] = FrozenTrial(
                number=number, state=state, value=None,
                values=[values[k] for k in sorted(values)] if values else None,
                datetime_start=start, datetime_complete=complete, params=part["params"],
                distributions=part["dists"], user_attrs=part["user"],
                system_attrs=part["system"], intermediate_values=part["inter"],
                trial_id=trial_id)
            if state.is_finished():
                known["unfinished"].discard(trial_id)
                known["last"] = max(known["last"], trial_id)
                self._finished[trial_id] = trials[number]
            else:
                known["unfinished"].add(trial_id)
        self._studies[study_id] = known
        return [trials[n] for n in sorted(trials)]

    def _children_query(self) -> Any:
        """The parameters, values and attributes of the trials bound as ``ids``, in the
        columns (kind, trial id, name, index, number, text, type, order), each kind in
        written order."""
        sa = self._sa
        c, k = self._children, self._kinds

        def part(kind: int, table: Any, key: Any, name: Any = None, idx: Any = None,
                 num: Any = None, text: Any = None, vtype: Any = None) -> Any:
            def column(value: Any, sql_type: Any) -> Any:
                return sa.cast(sa.null(), sql_type) if value is None else value

            return sa.select(
                sa.literal(kind, sa.Integer).label("kind"), table.c.trial_id.label("trial_id"),
                column(name, sa.String).label("name"), column(idx, sa.Integer).label("idx"),
                column(num, sa.Float).label("num"), column(text, sa.Text).label("text"),
                (sa.cast(vtype, sa.String) if vtype is not None
                 else sa.cast(sa.null(), sa.String)).label("vtype"),
                key.label("ord")).where(table.c.trial_id.in_(ids))

        ids = sa.bindparam("ids", expanding=True)

        p, v, u, y, i = (c["params"], c["values"], c["user"], c["system"], c["intermediate"])
        union = sa.union_all(
            part(k["param"], p, p.c.param_id, name=p.c.param_name, num=p.c.param_value,
                 text=p.c.distribution_json),
            part(k["value"], v, v.c.trial_value_id, idx=v.c.objective, num=v.c.value,
                 vtype=v.c.value_type),
            part(k["user"], u, u.c.trial_user_attribute_id, name=u.c.key, text=u.c.value_json),
            part(k["system"], y, y.c.trial_system_attribute_id, name=y.c.key,
                 text=y.c.value_json),
            part(k["inter"], i, i.c.trial_intermediate_value_id, idx=i.c.step,
                 num=i.c.intermediate_value, vtype=i.c.intermediate_value_type),
        ).subquery()
        return sa.select(*union.c).order_by(union.c.kind, union.c.ord)

    def stale(self, study_id: int, grace_s: float) -> list[int]:
        """Optuna's ``_get_stale_trial_ids`` in one statement: the study's RUNNING trials
        whose last heartbeat is more than ``grace_s`` seconds older than the database's
        clock (trials without a heartbeat are never stale)."""
        import datetime

        from optuna.storages._rdb import models

        sa = self._sa
        if self._stale is None:
            t, h = self._trials, models.TrialHeartbeatModel.__table__
            self._stale = (sa.select(t.c.trial_id, h.c.heartbeat, sa.func.now())
                           .join(h, h.c.trial_id == t.c.trial_id)
                           .where(t.c.study_id == sa.bindparam("study"),
                                  t.c.state == TrialState.RUNNING)
                           .order_by(t.c.trial_id))
        with autocommit(self._engine) as conn:
            rows = conn.execute(self._stale, {"study": study_id}).all()
        grace = datetime.timedelta(seconds=grace_s)
        # As Optuna compares them: the server's time without its zone, against the stored
        # (zone-less) beat.
        return [trial_id for trial_id, beat, now in rows
                if now.replace(tzinfo=None) - beat > grace]

    def _study_rows(self, column: str, value: Any) -> list[Any]:
        """``(study id, direction)`` rows of the study whose ``column`` is ``value``, in
        objective order (one statement, built on first use).

        Raises:
            KeyError: no such study (Optuna's message).
        """
        sa, models = self._sa, self._models
        statement = self._study_statements.get(column)
        if statement is None:
            studies = models.StudyModel.__table__
            d = models.StudyDirectionModel.__table__
            statement = self._study_statements[column] = (
                sa.select(studies.c.study_id, d.c.direction)
                .select_from(studies.outerjoin(d, d.c.study_id == studies.c.study_id))
                .where(studies.c[column] == sa.bindparam("key"))
                .order_by(d.c.objective))
        with autocommit(self._engine) as conn:
            rows = conn.execute(statement, {"key": value}).all()
        if not rows:
            raise KeyError(models.NOT_FOUND_MSG)
        return rows

    def study_id(self, name: str) -> tuple[int, list[Any]]:
        """Optuna's ``get_study_id_from_name`` in one statement, without its ORM session,
        with the study's directions (which every caller asks next: one round trip less).

        Returns:
            ``(study id, directions)``.

        Raises:
            KeyError: no study of that name (Optuna's message).
        """
        rows = self._study_rows("study_name", name)
        return rows[0][0], [row[1] for row in rows if row[1] is not None]

    def directions(self, study_id: int) -> list[Any]:
        """Optuna's ``get_study_directions`` in one statement (its ORM takes two).

        Raises:
            KeyError: no such study (Optuna's message).
        """
        return [row[1] for row in self._study_rows("study_id", study_id) if row[1] is not None]

    def finished(self, trial_id: int) -> FrozenTrial | None:
        """A finished trial from an earlier read (finished trials never change)."""
        return self._finished.get(trial_id)
