"""ProcessStorage (panther.tuner.storage_view): a process's view of a shared Optuna storage.

What it must keep: every read equals what Optuna itself reads from the same database, and
every write reaches the storage before anything the process does next; what it saves is
checked by counting the SQL statements and transactions it sends.
"""

from __future__ import annotations

import math
import os
import uuid

import optuna
import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The `url` and `away_from_utc` fixtures come from storage_helpers (see conftest.py).
from storage_helpers import _postgres, counting, optuna_view, same

from panther.tuner import storage as storage_mod
from panther.tuner.storage import open_storage
from panther.tuner.storage_view import ProcessStorage, write_batch

D = optuna.distributions
SPACE = {
    "i": D.IntDistribution(1, 64),
    "l": D.IntDistribution(1, 1024, log=True),
    "f": D.FloatDistribution(-1.0, 1.0),
    "c": D.CategoricalDistribution(["a", "b", None, 3]),
}


def fill(study: optuna.Study) -> None:
    """Trials in every state, with every kind of value Optuna stores specially."""
    for k, value in enumerate([1.5, math.inf, -math.inf, 0.25]):
        trial = study.ask(SPACE)
        trial.set_user_attr("row", {"k": k, "list": [1, "x", None]})
        trial.storage.set_trial_system_attr(trial._trial_id, "owner", f"w{k}")
        study.tell(trial, value)
    failed = study.ask(SPACE)
    failed.set_user_attr("error", "boom")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    pruned = study.ask(SPACE)
    pruned.report(0.5, step=1)
    pruned.report(float("nan"), step=2)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    study.enqueue_trial({"i": 3, "l": 8, "f": 0.0, "c": "b"}, user_attrs={"retry": 1})
    running = study.ask(SPACE)  # pops the enqueued one
    running.set_user_attr("note", "running")
    study.ask(SPACE)  # another, left running


# ---------------------------------------------------------------- reads equal Optuna's
def test_reads_equal_optunas_and_follow_changes(url, away_from_utc):
    view = open_storage(url)
    assert isinstance(view, ProcessStorage) and view._reader is not None
    study = optuna.create_study(storage=view, study_name=f"v-{uuid.uuid4().hex[:8]}")
    fill(study)
    sid = study._study_id
    same(view.get_all_trials(sid, deepcopy=False), optuna_view(url, sid))
    # Another process changes the study: finishes a running trial, adds new ones.
    with storage_mod.quiet_optuna():
        other = optuna.load_study(study_name=study.study_name, storage=url)
    running = [t for t in other.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    other.tell(running[0].number, 2.0)
    other.add_trial(optuna.trial.create_trial(params={"i": 5}, distributions={"i": SPACE["i"]},
                                              value=3.0, user_attrs={"added": True}))
    late = other.ask(SPACE)
    late.set_user_attr("late", 1)
    same(view.get_all_trials(sid, deepcopy=False), optuna_view(url, sid))
    assert [t.state for t in view.get_all_trials(sid, states=(optuna.trial.TrialState.WAITING,))] == []
    with pytest.raises(KeyError):
        view.get_all_trials(10**9)


def test_multi_objective_values_read_in_objective_order(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, directions=["maximize", "minimize"],
                                study_name=f"mo-{uuid.uuid4().hex[:8]}")
    for values in ([1.0, 2.0], [math.inf, -3.0], [0.0, -math.inf]):
        study.tell(study.ask(SPACE), values)
    same(view.get_all_trials(study._study_id, deepcopy=False), optuna_view(url, study._study_id))


ops = st.lists(st.tuples(st.sampled_from(["complete", "fail", "prune", "run", "waiting"]),
                         st.one_of(st.floats(allow_nan=False), st.sampled_from([math.inf, -math.inf])),
                         st.dictionaries(st.text(min_size=1, max_size=5),
                                         st.one_of(st.integers(), st.text(max_size=5), st.none(),
                                                   st.lists(st.integers(), max_size=3)),
                                         max_size=3)),
               min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=ops, then=ops)
def test_random_studies_read_the_same_as_optuna(tmp_path, first, then):
    url = f"sqlite:///{tmp_path / f'h-{uuid.uuid4().hex[:8]}.db'}"
    view = open_storage(url)
    study = optuna.create_study(storage=view)

    def apply(batch):
        for kind, value, attrs in batch:
            if kind == "waiting":
                study.enqueue_trial({"i": 2}, user_attrs=attrs)
                continue
            trial = study.ask(SPACE)
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)
            if kind == "complete":
                study.tell(trial, value)
            elif kind == "fail":
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif kind == "prune":
                trial.report(value, step=0)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    apply(first)
    same(view.get_all_trials(study._study_id, deepcopy=False), optuna_view(url, study._study_id))
    apply(then)  # incremental: only unfinished and new trials are read again
    same(view.get_all_trials(study._study_id, deepcopy=False), optuna_view(url, study._study_id))


# ---------------------------------------------------------------- own running trials
def test_own_running_trial_is_served_from_memory_and_kept_current(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"own-{uuid.uuid4().hex[:8]}")
    trial = study.ask(SPACE)
    trial.set_user_attr("score", 1.0)
    with counting(view) as counts:
        copy = view.get_trial(trial._trial_id)
        for _ in range(3):
            view.get_trial(trial._trial_id)
    assert counts["statements"] == 0
    stored = optuna_view(url, study._study_id)[0]
    assert copy.params == stored.params and copy.user_attrs == stored.user_attrs
    assert copy.datetime_start == stored.datetime_start and copy.state == stored.state
    copy.params["i"] = -1  # callers get copies
    assert view.get_trial(trial._trial_id).params["i"] == stored.params["i"]
    finished = study.tell(trial, 4.0)  # Optuna reads it back once more: from memory too
    assert finished.state == optuna.trial.TrialState.COMPLETE and finished.values == [4.0]
    assert optuna_view(url, study._study_id)[0].values == [4.0]


def test_a_trial_failed_by_another_process_refuses_this_ones_writes(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"taken-{uuid.uuid4().hex[:8]}")
    trial = study.ask(SPACE)
    with storage_mod.quiet_optuna():
        other = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    other.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr("late", 1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        with write_batch(view):
            trial.set_user_attr("late", 2)
    with pytest.raises((optuna.exceptions.UpdateFinishedTrialError, ValueError)):
        study.tell(trial, 1.0)
    assert optuna_view(url, study._study_id)[0].state == optuna.trial.TrialState.FAIL


# ---------------------------------------------------------------- batched writes
def test_a_batch_is_one_transaction_and_lands_before_the_next_call(url):
    view = open_storage(url, heartbeat_interval=5)
    study = optuna.create_study(storage=view, study_name=f"b-{uuid.uuid4().hex[:8]}")
    with counting(view) as plain, storage_mod.quiet_optuna():
        study.ask(SPACE)
    with counting(view) as batched, storage_mod.quiet_optuna():
        with write_batch(view):
            trial = study.ask(SPACE)
            view.record_heartbeat(trial._trial_id)
            queued = list(view._clock.queue)
    assert [op[0] for op in queued] == ["param"] * 4 + ["beat"]
    # Creating the trial is one commit either way; its four parameters and the heartbeat
    # are four commits one by one, one together.
    assert plain["commits"] - batched["commits"] >= 3, (plain, batched)
    stored = optuna_view(url, study._study_id)[-1]
    assert stored.params == trial.params
    # Inside a batch, any other call sends the queue first: a read sees the writes.
    with write_batch(view):
        trial.set_user_attr("a", 1)
        trial.storage.set_trial_system_attr(trial._trial_id, "b", [2])
        seen = {t.number: t for t in optuna_view(url, study._study_id)}
        assert "a" not in seen[trial.number].user_attrs
        view.get_all_trials(study._study_id)
        seen = {t.number: t for t in optuna_view(url, study._study_id)}
        assert seen[trial.number].user_attrs == {"a": 1}
        assert seen[trial.number].system_attrs["b"] == [2]


def test_a_conflicting_batch_falls_back_to_optunas_one_by_one_writes(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"c-{uuid.uuid4().hex[:8]}")
    trial = study.ask({"i": SPACE["i"]})
    with write_batch(view):
        # The same parameter twice: Optuna keeps the first (its unique key refuses the
        # second); the batch's transaction fails as a whole and is replayed one by one.
        view.set_trial_param(trial._trial_id, "j", 1.0, SPACE["f"])
        view.set_trial_param(trial._trial_id, "j", 0.5, SPACE["f"])
        trial.set_user_attr("after", True)
    stored = optuna_view(url, study._study_id)[0]
    assert stored.params["j"] == 1.0 and stored.user_attrs == {"after": True}


def test_writes_outside_a_batch_or_to_others_trials_go_at_once(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"o-{uuid.uuid4().hex[:8]}")
    with storage_mod.quiet_optuna():
        other = optuna.load_study(study_name=study.study_name, storage=url)
    foreign = other.ask(SPACE)
    with write_batch(view):
        view.set_trial_user_attr(foreign._trial_id, "seen", 1)  # not this process's trial
        assert optuna_view(url, study._study_id)[0].user_attrs == {"seen": 1}


# ---------------------------------------------------------------- reuse, ids, accounting
def test_last_read_reuses_the_read_and_study_ids_are_remembered(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"r-{uuid.uuid4().hex[:8]}")
    study.tell(study.ask(SPACE), 1.0)
    first = view.get_all_trials(study._study_id)
    with counting(view) as counts:
        with view.last_read():
            again = view.get_all_trials(study._study_id)
        view.get_study_id_from_name(study.study_name)
    assert counts["statements"] == 0 and [t.number for t in again] == [t.number for t in first]
    before = view.seconds()
    with counting(view) as counts:
        view.get_all_trials(study._study_id)
    assert counts["statements"] > 0 and view.seconds() > before
    view.delete_study(study._study_id)
    with pytest.raises(KeyError):
        view.get_study_id_from_name(study.study_name)


def test_journal_storage_is_wrapped_too(tmp_path):
    view = open_storage(f"journal:{tmp_path / 'run.log'}")
    study = optuna.create_study(storage=view)
    with write_batch(view):  # nothing to batch on a file: written one by one
        trial = study.ask(SPACE)
    study.tell(trial, 1.0)
    assert view.get_heartbeat_interval() is None
    assert study.trials[0].params == trial.params and study.trials[0].value == 1.0


# ---------------------------------------------------------------- connections
def test_an_idle_connection_the_server_closed_is_replaced(monkeypatch):
    url = _postgres()
    if url is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test against PostgreSQL (.ci/run starts it)")
        pytest.skip("no PostgreSQL server; `export PANTHER_TEST_POSTGRES_URL=$(make -s postgres)`")
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"p-{uuid.uuid4().hex[:8]}")
    engine = view.inner._backend.engine
    engine.dispose()  # one pooled connection from here on: the one the server will close
    with engine.connect() as conn:
        pids = {conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()}
    # The server ends this process's pooled connection (a restart, an idle timeout...).
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        for pid in pids:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    admin.dispose()
    monkeypatch.setattr(storage_mod, "PING_AFTER_IDLE_S", 0.0)
    study.tell(study.ask(SPACE), 1.0)  # no OperationalError: the dead connection was replaced
    assert len(view.get_all_trials(study._study_id)) == 1


def test_a_result_and_its_end_are_one_transaction_like_optunas_tell(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"t-{uuid.uuid4().hex[:8]}",
                                directions=["maximize", "minimize"])
    plain, batched = study.ask(SPACE), study.ask(SPACE)
    with counting(view) as one_by_one:
        plain.set_user_attr("score", 1.5)
        plain.set_user_attr("row", {"status": "ok"})
        study.tell(plain, [1.0, -math.inf])
    with counting(view) as together:
        with write_batch(view):
            batched.set_user_attr("score", 1.5)
            batched.set_user_attr("row", {"status": "ok"})
            returned = study.tell(batched, [1.0, -math.inf])
    assert together["commits"] == 1 and one_by_one["commits"] == 3, (together, one_by_one)
    stored = {t.number: t for t in optuna_view(url, study._study_id)}
    a, b = stored[plain.number], stored[batched.number]
    assert (b.state, b.values, b.user_attrs) == (a.state, a.values, a.user_attrs)
    assert b.params == batched.params
    assert b.datetime_complete is not None and b.datetime_complete >= b.datetime_start
    assert abs((b.datetime_complete - a.datetime_complete).total_seconds()) < 60
    assert returned.values == [1.0, -math.inf]
    # A failed trial ends the same way; a trial another process finished is refused whole.
    failed, taken = study.ask(SPACE), study.ask(SPACE)
    with write_batch(view):
        failed.set_user_attr("error", "boom")
        study.tell(failed, state=optuna.trial.TrialState.FAIL)
    with storage_mod.quiet_optuna():
        other = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    other.set_trial_state_values(taken._trial_id, optuna.trial.TrialState.FAIL)
    with pytest.raises((optuna.exceptions.UpdateFinishedTrialError, ValueError)):
        with write_batch(view):
            taken.set_user_attr("late", 1)
            study.tell(taken, [2.0, 2.0])
    stored = {t.number: t for t in optuna_view(url, study._study_id)}
    assert stored[failed.number].state == optuna.trial.TrialState.FAIL
    assert stored[failed.number].user_attrs == {"error": "boom"}
    assert stored[taken.number].user_attrs == {} and stored[taken.number].values is None


def test_a_study_this_process_made_or_found_is_read_without_checking_it_exists(url):
    view = open_storage(url)
    study = optuna.create_study(storage=view, study_name=f"e-{uuid.uuid4().hex[:8]}")
    with counting(view) as counts:
        assert view.get_all_trials(study._study_id) == []
    assert counts["statements"] == 1  # the trials only: no existence check, no children
    other = open_storage(url)  # knows the study by its name only
    other.get_study_id_from_name(study.study_name)
    with counting(other) as counts:
        other.get_all_trials(study._study_id)
    assert counts["statements"] == 1
    with pytest.raises(KeyError):  # an id it never saw is checked, as Optuna checks it
        open_storage(url).get_all_trials(10**9)


def test_a_known_study_s_name_and_directions_are_read_once(url):
    """Directions never change and a name keeps its id: a view reads them once (a worker
    joining a run loads two studies, each of which Optuna would look up three times)."""
    view = open_storage(url)
    name = f"d-{uuid.uuid4().hex[:8]}"
    made = optuna.create_study(storage=view, study_name=name, directions=["maximize", "minimize"])
    with counting(view) as counts:  # it made the study: nothing to read
        assert optuna.load_study(study_name=name, storage=view).directions == made.directions
        assert view.get_study_name_from_id(made._study_id) == name
    assert counts["statements"] == 0
    other = open_storage(url)  # another process's view, knowing nothing yet
    with counting(other) as first:
        assert optuna.load_study(study_name=name, storage=other).directions == made.directions
    with counting(other) as again:
        optuna.load_study(study_name=name, storage=other)
        assert other.get_study_name_from_id(made._study_id) == name
    # One statement: the study's id by its name comes with its directions.
    assert first["statements"] == 1 and again["statements"] == 0
    other.delete_study(made._study_id)  # forgotten with the study
    with pytest.raises(KeyError):
        other.get_study_id_from_name(name)
    with pytest.raises(KeyError):
        other.get_study_directions(made._study_id)


def test_joining_an_existing_study_loads_it_without_trying_to_create_it(url, monkeypatch):
    """OptunaSearch with load_if_exists looks the study up first: Optuna's create_study
    would insert it first, and that insert fails (or waits, while another process's
    creation of the same name is still open) for every worker but the first."""
    from panther.tuner import Int, OptunaSearch

    name = f"j-{uuid.uuid4().hex[:8]}"
    first = OptunaSearch(n_trials=2, study_name=name, storage=url, load_if_exists=True,
                         direction="minimize")
    first.initialize({"x": Int(1, 4)})

    def refuse(*args, **kwargs):
        raise AssertionError("the existing study was created again")

    monkeypatch.setattr(ProcessStorage, "create_new_study", refuse)
    second = OptunaSearch(n_trials=2, study_name=name, storage=open_storage(url),
                          load_if_exists=True, direction="minimize")
    second.initialize({"x": Int(1, 4)})
    assert second.study._study_id == first.study._study_id
    assert second.study.direction == optuna.study.StudyDirection.MINIMIZE


def test_study_directions_are_read_as_optuna_reads_them(url):
    view = open_storage(url)
    for directions in (["minimize"], ["maximize", "minimize", "maximize"]):
        study = optuna.create_study(storage=url, study_name=f"r-{uuid.uuid4().hex[:8]}",
                                    directions=directions)
        fresh = open_storage(url)
        with counting(fresh) as counts:
            got = fresh.get_study_directions(study._study_id)
        assert got == optuna.storages.RDBStorage(url).get_study_directions(study._study_id)
        assert counts["statements"] == 1
    with pytest.raises(KeyError):
        view.get_study_directions(10**9)


def test_a_study_is_found_by_name_as_optuna_finds_it(url):
    name = f"n-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=url, study_name=name,
                                directions=["maximize", "minimize", "maximize"])
    fresh = open_storage(url)
    with counting(fresh) as counts:
        assert fresh.get_study_id_from_name(name) == study._study_id
        # read in the same statement, in objective order
        assert fresh.get_study_directions(study._study_id) == \
            optuna.storages.RDBStorage(url).get_study_directions(study._study_id)
    assert counts["statements"] == 1
    assert fresh.get_study_id_from_name(name) == \
        optuna.storages.RDBStorage(url).get_study_id_from_name(name)
    with pytest.raises(KeyError):
        fresh.get_study_id_from_name(f"{name}-missing")
