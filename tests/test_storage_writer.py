"""RDBWriter (panther.tuner.storage_writer): a worker's own trials written straight to
Optuna's tables.

What it must keep: the rows Optuna itself would write (read back with Optuna's own storage
and compared field by field with a study Optuna wrote), unique trial numbers next to
Optuna's own writers, and Optuna's refusals; what it saves is checked by counting
statements.
"""

from __future__ import annotations

import datetime
import math
import pickle
import threading
import uuid

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The `url` and `away_from_utc` fixtures come from storage_helpers (see conftest.py).
from storage_helpers import counting, optuna_view

from panther.tuner import storage as storage_mod
from panther.tuner.storage import open_storage
from panther.tuner.storage_view import write_batch
from panther.tuner.storage_writer import RDBWriter, WriterRDBStorage

D = optuna.distributions
SPACE = {
    "i": D.IntDistribution(1, 64),
    "l": D.IntDistribution(1, 1024, log=True),
    "f": D.FloatDistribution(-1.0, 1.0),
    "s": D.FloatDistribution(0.0, 1.0, step=0.25),
    "c": D.CategoricalDistribution(["a", "b", None, 3]),
}
STATE = optuna.trial.TrialState


def plain_optuna(url: str) -> optuna.storages.RDBStorage:
    """Optuna's own storage on ``url``, as ``optuna.create_study(storage=url)`` builds it."""
    with storage_mod.quiet_optuna():
        return optuna.storages.RDBStorage(url, skip_compatibility_check=True)


def comparable(trials: list) -> list[dict]:
    """The trials' fields, without what differs between two studies by nature (ids) or by
    the clock (dates: checked apart)."""
    rows = []
    for t in trials:
        row = dict(vars(t))
        for key in ("_trial_id", "_datetime_start", "datetime_start", "_datetime_complete",
                    "datetime_complete"):
            row.pop(key, None)
        row["intermediate_values"] = repr(row["intermediate_values"])
        row["has_start"] = t.datetime_start is not None
        row["has_end"] = t.datetime_complete is not None
        rows.append(row)
    return rows


def dates_near_now(trials: list, since: datetime.datetime) -> None:
    """Every stored date is this machine's local time, between ``since`` and now."""
    now = datetime.datetime.now() + datetime.timedelta(seconds=1)
    for t in trials:
        for when in (t.datetime_start, t.datetime_complete):
            if when is not None:
                assert since - datetime.timedelta(seconds=1) <= when <= now, (t.number, when)


def scenario(study: optuna.Study, batched: bool) -> None:
    """Trials in every state and every kind of value, as a worker and Optuna's API write them."""
    block = (lambda: write_batch(study._storage)) if batched else \
        (lambda: __import__("contextlib").nullcontext())
    for k, value in enumerate([1.5, math.inf, -math.inf, 0.25]):
        with block():
            trial = study.ask(SPACE)
        trial.storage.set_trial_system_attr(trial._trial_id, "owner", f"w{k}")
        with block():
            trial.set_user_attr("row", {"k": k, "list": [1, "x", None]})
            trial.set_user_attr("row", {"k": k, "again": True})  # the last write wins
            trial.set_user_attr("score", value if math.isfinite(value) else str(value))
            study.tell(trial, value)
    with block():
        failed = study.ask(SPACE)
        failed.set_user_attr("error", "boom")
        study.tell(failed, state=STATE.FAIL)
    pruned = study.ask(SPACE)
    pruned.report(0.5, step=1)
    pruned.report(float("nan"), step=2)
    study.tell(pruned, state=STATE.PRUNED)
    study.enqueue_trial({"i": 3, "l": 8, "f": 0.0, "s": 0.5, "c": None}, user_attrs={"retry": 1})
    with block():
        popped = study.ask(SPACE)  # the enqueued one: created by Optuna from its template
        popped.set_user_attr("note", "popped")
        study.tell(popped, 2.0)
    with block():
        study.ask(SPACE).set_user_attr("note", "left running")
    # Trials from templates: attributes only (as panther's leases), written by the direct
    # writer; with parameters and values (Study.add_trial), left to Optuna.
    lease = optuna.trial.create_trial(state=STATE.RUNNING, user_attrs={"u": [1, None]},
                                      system_attrs={"lease": {"pid": 1, "host": "h"}, "beat": 2.5})
    study._storage.create_new_trial(study._study_id, template_trial=lease)
    study.add_trial(optuna.trial.create_trial(params={"i": 5}, distributions={"i": SPACE["i"]},
                                              value=3.0, user_attrs={"added": True}))


# ---------------------------------------------------------------- the rows equal Optuna's
@pytest.mark.parametrize("batched", [False, True])
def test_writes_equal_what_optuna_writes(url, away_from_utc, batched):
    since = datetime.datetime.now()
    view = open_storage(url, heartbeat_interval=60)
    assert view._writer is not None
    name = uuid.uuid4().hex[:8]
    mine = optuna.create_study(storage=view, study_name=f"w-{name}",
                               sampler=optuna.samplers.RandomSampler(seed=3))
    theirs = optuna.create_study(storage=plain_optuna(url), study_name=f"o-{name}",
                                 sampler=optuna.samplers.RandomSampler(seed=3))
    scenario(mine, batched)
    scenario(theirs, batched=False)
    ours, optunas = optuna_view(url, mine._study_id), optuna_view(url, theirs._study_id)
    assert comparable(ours) == comparable(optunas)
    dates_near_now(ours, since)
    # Multiple objectives: the values in objective order, infinities as Optuna stores them.
    view_mo = optuna.create_study(storage=view, directions=["maximize", "minimize"])
    plain_mo = optuna.create_study(storage=plain_optuna(url), directions=["maximize", "minimize"])
    for study in (view_mo, plain_mo):
        for values in ([1.0, 2.0], [math.inf, -3.0], [0.0, -math.inf]):
            with write_batch(study._storage):
                study.tell(study.ask(SPACE), values)
    assert [t.values for t in optuna_view(url, view_mo._study_id)] == \
        [t.values for t in optuna_view(url, plain_mo._study_id)]


kinds = st.sampled_from(["complete", "fail", "prune", "running"])
attrs = st.dictionaries(st.sampled_from(["a", "b", "c"]),
                        st.one_of(st.integers(), st.text(max_size=4), st.none(),
                                  st.lists(st.booleans(), max_size=2)), max_size=3)
steps = st.lists(st.tuples(kinds, st.floats(allow_nan=False), attrs, attrs, st.booleans()),
                 min_size=1, max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_random_trials_are_stored_as_optuna_stores_them(tmp_path, steps):
    url = f"sqlite:///{tmp_path / f'h-{uuid.uuid4().hex[:8]}.db'}"
    view = open_storage(url)
    mine = optuna.create_study(storage=view, sampler=optuna.samplers.RandomSampler(seed=0))
    theirs = optuna.create_study(storage=plain_optuna(url),
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    for study, is_view in ((mine, True), (theirs, False)):
        for kind, value, first, then, batched in steps:
            batch = write_batch(study._storage) if is_view and batched else None
            if batch is not None:
                batch.__enter__()
            trial = study.ask(SPACE)
            for key, attr in first.items():
                trial.set_user_attr(key, attr)
            for key, attr in then.items():
                trial.storage.set_trial_system_attr(trial._trial_id, key, attr)
            if kind == "complete":
                study.tell(trial, value)
            elif kind == "fail":
                study.tell(trial, state=STATE.FAIL)
            elif kind == "prune":
                trial.report(value, step=0)
                study.tell(trial, state=STATE.PRUNED)
            if batch is not None:
                batch.__exit__(None, None, None)
    assert comparable(optuna_view(url, mine._study_id)) == \
        comparable(optuna_view(url, theirs._study_id))


# ---------------------------------------------------------------- numbers, refusals
def test_trial_numbers_stay_unique_next_to_optunas_own_writers(url):
    """Four writers at once on one study, two of them Optuna's own: every number once."""
    name = f"n-{uuid.uuid4().hex[:8]}"
    optuna.create_study(storage=plain_optuna(url), study_name=name)
    storages = [open_storage(url), open_storage(url), plain_optuna(url), plain_optuna(url)]
    errors = []

    def create(storage):
        try:
            study_id = storage.get_study_id_from_name(name)
            for _ in range(15):
                storage.create_new_trial(study_id)
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    trials = optuna_view(url, storages[2].get_study_id_from_name(name))
    assert sorted(t.number for t in trials) == list(range(60))
    # Numbers follow creation: trial ids and numbers are in the same order.
    assert [t.number for t in sorted(trials, key=lambda t: t._trial_id)] == list(range(60))


def test_writes_to_a_finished_or_missing_trial_are_refused_as_optuna_refuses_them(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"r-{uuid.uuid4().hex[:8]}")
    trial = study.ask({"i": SPACE["i"]})
    plain_optuna(url).set_trial_state_values(trial._trial_id, STATE.FAIL)  # another process
    writer = view._writer
    for ops, finish in (([("user", trial._trial_id, "late", 1)], None),
                        ([("param", trial._trial_id, "j", 0.5, SPACE["f"])], None),
                        ([("user", trial._trial_id, "late", 1)], (trial._trial_id, STATE.COMPLETE, [1.0]))):
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            writer.write(ops, finish)
    stored = optuna_view(url, study._study_id)[0]
    assert (stored.state, stored.user_attrs, stored.values) == (STATE.FAIL, {}, None)
    assert "j" not in stored.params
    with pytest.raises(KeyError):
        writer.write([("user", 10**9, "x", 1)])
    with pytest.raises(KeyError):
        writer.write([], (10**9, STATE.COMPLETE, [1.0]))
    with pytest.raises(KeyError):
        writer.create_trial(10**9)
    # The refused creation left nothing open: the next one works, numbered after the first.
    assert writer.create_trial(study._study_id).number == 1


def test_a_parameter_must_keep_its_distribution_as_optuna_requires(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"d-{uuid.uuid4().hex[:8]}")
    study.tell(study.ask({"i": SPACE["i"]}), 1.0)
    fresh = open_storage(url)  # knows nothing of the study: asks the database
    other = fresh.create_new_trial(study._study_id)
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        with write_batch(fresh):
            fresh.set_trial_param(other, "i", 0.5, SPACE["f"])
    fresh.set_trial_param(other, "i", 7, D.IntDistribution(1, 8))  # same kind: accepted
    assert optuna_view(url, study._study_id)[1].params == {"i": 7}


def test_a_parameter_new_here_is_guarded_in_the_message_not_read_first(url):
    """A worker's first trial: its parameters' distributions are new to the process. On
    psycopg2 the batch is still one message, guarded: it goes through when the study holds
    no other distribution for the parameter; a compatible other one (another range) is
    settled the checked way and accepted; an incompatible one is refused as Optuna refuses
    it, with nothing written."""
    view = open_storage(url, heartbeat_interval=60)
    study = optuna.create_study(storage=view, study_name=f"g-{uuid.uuid4().hex[:8]}")
    first = study.ask()
    with counting(view) as counts:
        with write_batch(view):
            view.set_trial_param(first._trial_id, "i", 3, SPACE["i"])
            view.set_trial_param(first._trial_id, "c", 1, SPACE["c"])  # internal: "b"
            view.record_heartbeat(first._trial_id)
    if url.startswith("postgresql"):
        assert counts["statements"] == 1, counts
    # Another process, knowing nothing of the study's distributions:
    fresh = open_storage(url)
    wider = fresh.create_new_trial(study._study_id)
    with write_batch(fresh):  # the same kind with another range: Optuna accepts it
        fresh.set_trial_param(wider, "i", 100, D.IntDistribution(1, 128))
        fresh.set_trial_param(wider, "f", 0.5, SPACE["f"])  # new to the study
    wrong = fresh.create_new_trial(study._study_id)
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        with write_batch(fresh):
            fresh.set_trial_param(wrong, "f", 0.5, SPACE["f"])
            fresh.set_trial_param(wrong, "c", 1.0, SPACE["f"])  # categorical in the study
    third = fresh.create_new_trial(study._study_id)
    with counting(fresh) as counts:  # what the checked way learned is not read again
        with write_batch(fresh):
            fresh.set_trial_param(third, "i", 5, D.IntDistribution(1, 128))
            fresh.set_trial_user_attr(third, "after", 1)  # (a batch of one is Optuna's)
    if url.startswith("postgresql"):
        assert counts["statements"] == 1, counts
    stored = {t.number: t for t in optuna_view(url, study._study_id)}
    assert stored[first.number].params == {"i": 3, "c": "b"}
    assert stored[1].params == {"i": 100, "f": 0.5}
    assert stored[2].params == {}  # nothing of the refused batch
    assert (stored[3].params, stored[3].user_attrs) == ({"i": 5}, {"after": 1})
    assert stored[3].distributions["i"] == D.IntDistribution(1, 128)


# ---------------------------------------------------------------- what it saves
def test_a_trial_takes_half_the_statements(url):
    """A worker's trial (asked with its first heartbeat, claimed, told with its result):
    4 messages to PostgreSQL (11 statements to SQLite) on the direct writer, 22 statements
    through Optuna's."""
    view = open_storage(url, heartbeat_interval=60)
    study = optuna.create_study(storage=view, study_name=f"s-{uuid.uuid4().hex[:8]}")
    two = {"i": SPACE["i"], "f": SPACE["f"]}
    study.tell(study.ask(two), 0.0)  # the distributions are known from here on

    def one_trial():
        with write_batch(view), view.last_read():  # as a worker asks (see worker.py)
            trial = study.ask(two)
            view.record_heartbeat(trial._trial_id)
        view.set_trial_system_attr(trial._trial_id, "owner", "me")
        with write_batch(view):
            trial.set_user_attr("score", 1.0)
            trial.set_user_attr("row", {"status": "ok"})
            study.tell(trial, 1.0)

    with counting(view) as direct:
        one_trial()
    view._writer = None  # the same view writing through Optuna's helpers
    view.inner._backend._writer = None
    with counting(view) as through_optuna:
        one_trial()
    # PostgreSQL (psycopg2): the creation, the batch of parameters and first heartbeat,
    # the claim and the result's batch, one message each.
    most = 4 if url.startswith("postgresql") else 11
    assert direct["statements"] <= most < 20 <= through_optuna["statements"], (direct, through_optuna)
    # (On PostgreSQL the creation commits inside its one message, unseen by SQLAlchemy.)
    assert direct["commits"] <= through_optuna["commits"] == 4
    a, b = (comparable([t])[0] for t in optuna_view(url, study._study_id)[1:3])
    for row in (a, b):
        del row["_number"], row["_params"]  # differ by nature (random parameters)
    assert a == b


def test_the_storage_pickles_and_other_databases_are_left_to_optuna(tmp_path):
    with storage_mod.quiet_optuna():
        rdb = WriterRDBStorage(f"sqlite:///{tmp_path / 'p.db'}")
    assert rdb.writer is not None
    again = pickle.loads(pickle.dumps(rdb))
    assert isinstance(again.writer, RDBWriter) and again.writer is not rdb.writer

    class Other:
        engine = type("E", (), {"name": "mysql", "dialect": None})()

    with pytest.raises(ValueError, match="not to mysql"):
        RDBWriter(Other())


def test_a_lease_like_template_is_one_message_and_returned_as_optuna_returns_it(url):
    view = open_storage(url)
    plain = plain_optuna(url)
    mine = optuna.create_study(storage=view, study_name=f"l-{uuid.uuid4().hex[:8]}")
    theirs = optuna.create_study(storage=plain, study_name=f"k-{uuid.uuid4().hex[:8]}")
    template = optuna.trial.create_trial(state=STATE.RUNNING,
                                         system_attrs={"lease": {"id": "h:1"}, "beat": 1.0})
    with counting(view) as counts:
        trial_id = view.create_new_trial(mine._study_id, template_trial=template)
    # PostgreSQL: lock, insert, attributes and commit in one message; SQLite: 4 statements.
    assert counts["statements"] <= (1 if url.startswith("postgresql") else 4), counts
    returned = view.get_trial(trial_id)  # the copy the creation returned
    expected = plain.get_trial(plain.create_new_trial(theirs._study_id, template_trial=template))
    assert comparable([returned]) == comparable([expected])
    assert returned.datetime_start == optuna_view(url, mine._study_id)[0].datetime_start


def test_stale_trials_are_found_as_optuna_finds_them(url):
    """The one-statement stale check (storage_reader) against Optuna's own."""
    import sqlalchemy

    view = open_storage(url, heartbeat_interval=1, grace_period=30)
    study = optuna.create_study(storage=view, study_name=f"st-{uuid.uuid4().hex[:8]}")
    # `silent` never beats: never stale, by Optuna's rule.
    old, fresh, silent, done = (study.ask(SPACE) for _ in range(4))
    for trial in (old, fresh, done):
        view.record_heartbeat(trial._trial_id)
    study.tell(done, 1.0)
    beats = sqlalchemy.Table("trial_heartbeats", sqlalchemy.MetaData(),
                             autoload_with=view.inner._backend.engine)
    with view.inner._backend.engine.begin() as conn:  # `old` last beat a minute ago
        mine = beats.c.trial_id == old._trial_id
        beat = conn.execute(sqlalchemy.select(beats.c.heartbeat).where(mine)).scalar()
        if isinstance(beat, str):  # SQLite keeps the server's text
            beat = datetime.datetime.fromisoformat(beat)
        conn.execute(beats.update().where(mine)
                     .values(heartbeat=beat - datetime.timedelta(seconds=60)))
    with storage_mod.quiet_optuna():
        theirs = optuna.storages.RDBStorage(url, skip_compatibility_check=True,
                                            heartbeat_interval=1, grace_period=30)
    assert view._get_stale_trial_ids(study._study_id) == \
        theirs._get_stale_trial_ids(study._study_id) == [old._trial_id]
    with counting(view) as counts:
        view._get_stale_trial_ids(study._study_id)
    assert counts["statements"] == 1  # Optuna's takes three


def test_a_beating_thread_and_the_batches_never_deadlock(url):
    """A worker's lease thread beats for the trial its main thread is writing (the first
    heartbeat of a new trial inside a batch): both write the heartbeat row, neither waits
    on the other for good (the database would abort one)."""
    view = open_storage(url, heartbeat_interval=60)
    study = optuna.create_study(storage=view, study_name=f"dl-{uuid.uuid4().hex[:8]}")
    current: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def beat():
        while not stop.is_set():
            if current:
                try:
                    view.record_heartbeat(current[-1])
                except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
                    errors.append(exc)

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        for _ in range(60):
            with write_batch(view):
                trial = study.ask(SPACE)
                current.append(trial._trial_id)
                view.record_heartbeat(trial._trial_id)
            with write_batch(view):
                trial.set_user_attr("score", 1.0)
                study.tell(trial, 1.0)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert len(optuna_view(url, study._study_id)) == 60


def test_a_study_attribute_recorded_once_keeps_the_first_value(url):
    """Fingerprints: of processes recording theirs at once, the first stays, for all."""
    name = f"fp-{uuid.uuid4().hex[:8]}"
    study_id = plain_optuna(url).create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
    views = [open_storage(url) for _ in range(4)]
    got: dict[int, object] = {}
    barrier = threading.Barrier(len(views))

    def record(k):
        barrier.wait()
        got[k] = views[k].study_attr_once(study_id, "fp", {"worker": k})

    threads = [threading.Thread(target=record, args=(k,)) for k in range(len(views))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = plain_optuna(url).get_study_user_attrs(study_id)["fp"]
    assert all(value == stored for value in got.values()), (got, stored)
    with counting(views[0]) as counts:
        assert views[0].study_attr_once(study_id, "fp", {"worker": "late"}) == stored
    # Optuna's read, write and read back take six or more; psycopg2 sends the insert and
    # the read in one message.
    assert counts["statements"] == (1 if url.startswith("postgresql") else 2)
    with pytest.raises(KeyError):
        views[0].study_attr_once(10**9, "fp", 1)


def test_a_study_attribute_once_on_a_journal_file(tmp_path):
    view = open_storage(f"journal:{tmp_path / 'once.log'}")
    study = optuna.create_study(storage=view)
    assert view.study_attr_once(study._study_id, "fp", [1]) == [1]
    assert view.study_attr_once(study._study_id, "fp", [2]) == [1]


def test_the_one_message_creation_leaves_pooled_connections_transactional(url):
    """The creation runs its own BEGIN/COMMIT with the driver in autocommit (PostgreSQL):
    a connection it returns to the pool must be back to transactions, or a later batch
    would be written statement by statement."""
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"ac-{uuid.uuid4().hex[:8]}")
    for _ in range(3):
        view._writer.create_trial(study._study_id)
    engine = view.inner._backend.engine
    with engine.connect() as conn:
        assert conn.get_isolation_level() != "AUTOCOMMIT"
        if url.startswith("postgresql"):
            assert conn.connection.driver_connection.autocommit is False


def test_reads_and_one_statement_writes_open_no_transaction_on_postgresql(url):
    """psycopg2 sends BEGIN before a transaction's first statement and SQLAlchemy ends each
    checkout with ROLLBACK or COMMIT: two round trips more each. Reads, claims, beats and
    the one-message creation run in the driver's autocommit mode instead (nothing is left
    open after any of their statements); a batch is one message with its own BEGIN and
    COMMIT; the pooled connection goes back in its default mode."""
    import sqlalchemy

    if not url.startswith("postgresql"):
        pytest.skip("psycopg2's autocommit mode (PostgreSQL only)")
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    view = open_storage(url, heartbeat_interval=60)
    study = optuna.create_study(storage=view, study_name=f"a-{uuid.uuid4().hex[:8]}")
    engine = view.inner._backend.engine
    after: list[tuple[str, bool]] = []

    def note(conn, cursor, text, *args):
        status = conn.connection.dbapi_connection.info.transaction_status
        after.append((" ".join(text.split())[:40], status == TRANSACTION_STATUS_IDLE))

    sqlalchemy.event.listen(engine, "after_cursor_execute", note)
    try:
        trial = study.ask({"i": SPACE["i"]})  # the one-message creation, then a batch
        after.clear()
        view.get_all_trials(study._study_id)  # a read
        view.set_trial_system_attr(trial._trial_id, "owner", "me")  # a claim
        view.record_heartbeat(trial._trial_id)
        alone = list(after)
        after.clear()
        with write_batch(view):
            trial.set_user_attr("score", 1.0)
            study.tell(trial, 1.0)
        batch = list(after)
    finally:
        sqlalchemy.event.remove(engine, "after_cursor_execute", note)
    assert alone and all(idle for _, idle in alone), alone
    # A batch is one message carrying its own BEGIN and COMMIT.
    assert [(text.split(";")[0], idle) for text, idle in batch] == [("BEGIN", True)], batch
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False
    assert optuna_view(url, study._study_id)[0].user_attrs == {"score": 1.0}


def test_batches_of_known_parameters_refuse_and_settle_as_optuna_does(url):
    """Once a study's distributions are known here, a batch goes in one message on
    psycopg2 (its checks inside it): a finished trial, a changed distribution and a
    duplicated parameter are still refused or settled as Optuna would, writing nothing
    partial."""
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"k-{uuid.uuid4().hex[:8]}")
    two = {"i": SPACE["i"], "f": SPACE["f"]}
    study.tell(study.ask(two), 1.0)  # the distributions are known from here on
    ok, finished, twice = (study.ask() for _ in range(3))
    with write_batch(view):
        view.set_trial_param(ok._trial_id, "i", 3, SPACE["i"])
        view.set_trial_param(ok._trial_id, "f", 0.25, SPACE["f"])
        ok.set_user_attr("a", [1])
        view.record_heartbeat(ok._trial_id)
    plain_optuna(url).set_trial_state_values(finished._trial_id, STATE.FAIL)  # elsewhere
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        with write_batch(view):
            view.set_trial_param(finished._trial_id, "i", 3, SPACE["i"])
            finished.set_user_attr("late", 1)
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        with write_batch(view):
            view.set_trial_param(ok._trial_id, "i", 0.5, SPACE["f"])
            ok.set_user_attr("b", 2)
    with write_batch(view):  # Optuna keeps the first of a parameter written twice
        view.set_trial_param(twice._trial_id, "i", 1, SPACE["i"])
        view.set_trial_param(twice._trial_id, "i", 2, SPACE["i"])
        twice.set_user_attr("after", True)
    stored = {t.number: t for t in optuna_view(url, study._study_id)}
    assert (stored[ok.number].params, stored[ok.number].user_attrs) == ({"i": 3, "f": 0.25},
                                                                        {"a": [1]})
    assert (stored[finished.number].params, stored[finished.number].user_attrs) == ({}, {})
    assert (stored[twice.number].params, stored[twice.number].user_attrs) == ({"i": 1},
                                                                              {"after": True})


def test_a_batch_on_a_connection_the_server_closed_fails_as_optuna_fails(url):
    """The server ends the connection (a restart) just before a one-message batch: the
    write raises Optuna's StorageInternalError, nothing is left half-done, and the pool
    replaces the connection for the next write."""
    import sqlalchemy

    if not url.startswith("postgresql"):
        pytest.skip("one-message batches are psycopg2's")
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"x-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    engine = view.inner._backend.engine
    engine.dispose()  # one pooled connection from here on: the one the server will close
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    admin.dispose()
    batch = ([("user", trial._trial_id, "score", 1.0)], (trial._trial_id, STATE.COMPLETE, [1.0]))
    with pytest.raises(optuna.exceptions.StorageInternalError):
        view._writer.write(*batch)
    assert optuna_view(url, study._study_id)[0].state == STATE.RUNNING
    assert view._writer.write(*batch) is True
    stored = optuna_view(url, study._study_id)[0]
    assert (stored.state, stored.user_attrs, stored.values) == (STATE.COMPLETE, {"score": 1.0}, [1.0])


def test_a_connection_returned_with_a_block_open_is_dropped_from_the_pool(url):
    """A one-message transaction interrupted half-way (a signal) would leave its block open
    on the server while the driver, in autocommit mode, believes the connection idle: such
    a connection is not handed to the next user."""
    from panther.tuner.storage_reader import autocommit

    if not url.startswith("postgresql"):
        pytest.skip("psycopg2's autocommit mode")
    engine = open_storage(url).inner._backend.engine
    engine.dispose()
    with autocommit(engine) as conn:
        before = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        conn.exec_driver_sql("BEGIN")  # ... and no COMMIT: interrupted
    with autocommit(engine) as conn:
        after = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert conn.connection.dbapi_connection.get_transaction_status() == 0  # idle
    assert after != before
    with autocommit(engine) as conn:  # a clean one is kept
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == after
