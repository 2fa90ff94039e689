"""Workers sharing one tuning run through Optuna's storage (panther.tuner.worker).

The run is tests/distributed_app.py: two separately tuned layers whose scores depend only
on the sketch parameters, with an accuracy function that sleeps briefly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import torch

from panther.tuner.fingerprint import FingerprintMismatch
from panther.tuner.storage import (
    OWNER_ATTR,
    RETRY_ATTR,
    ConcurrentRunError,
    Lease,
    StorageError,
    check_storage,
    open_storage,
)
from panther.tuner.worker import resolve_device, run_status

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_app as app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = Path(app.__file__)
FREE = ("cached", "skipped")


def postgres_url() -> str:
    """The test server's URL; outside CI a missing server skips, naming the make target."""
    url = os.environ.get("PANTHER_TEST_POSTGRES_URL")
    problem = "PANTHER_TEST_POSTGRES_URL is not set"
    if url:
        try:
            check_storage(url)
            return url
        except StorageError as exc:
            problem = str(exc)
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test against PostgreSQL (.ci/run starts it): {problem}")
    pytest.skip(f"no PostgreSQL server ({problem}); start one with "
                "`export PANTHER_TEST_POSTGRES_URL=$(make -s postgres)`")


def start_workers(storage: str, n: int, *extra: str) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "PANTHER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return [subprocess.Popen([sys.executable, str(APP), "worker", storage, *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(n)]


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        out.append((proc.returncode, stdout, stderr))
    return out


def study_trials(storage: str, study: str, group: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"{study}/{group}", storage=open_storage(storage)).trials


def evaluated_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials whose configuration was evaluated (not cached, not skipped)."""
    return [t for t in trials if t.state.name == "COMPLETE"
            and t.user_attrs["panther_attrs"]["panther_row"]["status"] not in FREE]


def evaluated_rows(tuner) -> list[tuple]:
    return sorted((r["layer_name"], tuple(sorted(r["params"].items())), r["status"], r["score"])
                  for r in tuner.results.trials if r["status"] not in FREE)


def check_shared_run(storage: str, study: str, budget: int) -> None:
    """Budgets are global, no configuration was evaluated twice, nothing is left running."""
    for group in ("0", "2"):
        trials = study_trials(storage, study, group)
        evaluated = evaluated_trials(trials)
        assert len(evaluated) == budget, (group, len(evaluated))
        configs = [tuple(sorted(t.params.items())) for t in evaluated]
        assert len(set(configs)) == len(configs), configs  # no duplicate completed configuration
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def check_matches_single_process(storage: str, study: str) -> None:
    """finalize() gives the single-process results.

    The budget (7) equals the configurations the cost model lets through (8 minus one
    skipped), so any set of workers evaluates exactly the configurations one process does;
    the scores depend on the parameters alone, so trials, winners and the verified
    combination are equal. Only the sketch seeds differ (each worker draws its own),
    which is why the rows are compared without them.
    """
    shared = app.build(storage, study=study, n_trials=7, sampler="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fewer evaluations than the budget" warning
        shared.finalize()
    alone = app.build(None, n_trials=7, sampler="random")
    alone.tune()
    assert evaluated_rows(shared) == evaluated_rows(alone)
    assert shared.selected_params == alone.selected_params
    for key in ("final_accuracy", "final_speed", "speedup", "sketched_layers"):
        assert shared.report[key] == alone.report[key], key
    assert shared.report["finalized"] is True


@pytest.mark.slow
def test_four_workers_on_a_journal_file(tmp_path):
    storage = f"journal://{tmp_path}/run.log"
    results = finish(start_workers(storage, 4, "--n-trials", "7", "--sleep", "0.05",
                                   "--sampler", "random"))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    reports = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert sorted(r["ordinal"] for r in reports) == [0, 1, 2, 3]
    assert sum(r["evaluated"] for r in reports) == 2 * 7  # the budget, not 4 x the budget
    check_shared_run(storage, "dist", 7)
    check_matches_single_process(storage, "dist")
    status = run_status(storage, "dist")
    assert [s["evaluated"] for s in status["studies"]] == [7, 7] and status["workers"] == []


@pytest.mark.slow
def test_four_workers_on_postgresql():
    storage = postgres_url()
    study = f"dist-{uuid.uuid4().hex[:8]}"
    results = finish(start_workers(storage, 4, "--n-trials", "7", "--sleep", "0.05",
                                   "--sampler", "random", "--study", study))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    check_shared_run(storage, study, 7)
    check_matches_single_process(storage, study)


@pytest.mark.slow
def test_sigkill_mid_trial_then_another_worker_continues(tmp_path):
    storage = f"journal://{tmp_path}/run.log"
    (killed,) = finish(start_workers(storage, 1, "--n-trials", "4", "--die-at", "2"))
    assert killed[0] == -9, killed[2][-2000:]
    trials = study_trials(storage, "dist", "0")
    (running,) = [t for t in trials if t.state.name == "RUNNING"]  # died evaluating it
    assert OWNER_ATTR in running.system_attrs  # claimed for evaluation by the killed worker
    kept = evaluated_trials(trials)
    assert len(kept) == 1
    (rc, out, err), = finish(start_workers(storage, 1, "--n-trials", "4"))
    assert rc == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["retried"] == 1
    check_shared_run(storage, "dist", 4)
    trials = study_trials(storage, "dist", "0")
    assert trials[running.number].state.name == "FAIL"
    (retry,) = [t for t in trials if t.user_attrs.get(RETRY_ATTR) == running.number]
    assert retry.state.name == "COMPLETE" and retry.params == running.params
    assert trials[kept[0].number].state.name == "COMPLETE"  # completed work is kept
    assert run_status(storage, "dist")["studies"][0]["failed"] == 1


def test_one_worker_then_finalize_equals_tune(tmp_path):
    """In one process a worker draws the same proposals and sketch seeds as tune():
    finalize() reproduces tune()'s results exactly, seeds included."""
    storage = f"journal://{tmp_path}/run.log"
    report = app.build(storage, n_trials=4).run_worker(heartbeat_interval=1)
    assert report.ordinal == 0 and report.evaluated == 8 and report.retried == 0
    # Start-up is part of the call, and its storage time part of the whole.
    assert 0 < report.startup_s < report.wall_time_s
    assert 0 < report.startup_storage_s < report.storage_s
    shared = app.build(storage, n_trials=4)
    shared.finalize()
    alone = app.build(None, n_trials=4)
    alone.tune()
    key = ("layer_name", "params", "status", "score", "accuracy", "speed", "seeds")
    assert [tuple(str(r[k]) for k in key) for r in shared.results.trials] == \
        [tuple(str(r[k]) for k in key) for r in alone.results.trials]
    assert shared.results.selection == alone.results.selection
    # A second worker on the finished run has nothing to do.
    assert app.build(storage, n_trials=4).run_worker(heartbeat_interval=1).evaluated == 0


def test_joining_with_another_model_is_refused(tmp_path):
    storage = f"journal://{tmp_path}/run.log"
    app.build(storage, n_trials=1).run_worker(heartbeat_interval=1)
    other = app.build(storage, n_trials=1)
    with torch.no_grad():
        other.model[0].weight.add_(1.0)
    with pytest.raises(FingerprintMismatch, match="model weights") as info:
        other.run_worker(heartbeat_interval=1)
    assert "dist#run" in str(info.value)
    with pytest.raises(FingerprintMismatch, match="model weights"):
        other.finalize()
    changed = app.build(storage, n_trials=1, num_runs_per_param=2)
    with pytest.raises(FingerprintMismatch, match="num_runs_per_param: stored 1, now 2"):
        changed.run_worker(heartbeat_interval=1)


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_workers_starting_at_once_agree_on_the_first_ones_fingerprint(tmp_path, kind):
    """Worker A took its lease first but has not recorded the run's fingerprint yet when
    worker B, with another model, checks (both starting at once): B is refused, though
    it checks first, on a journal file too (which cannot write only-if-absent)."""
    from panther.tuner.fingerprint import tuner_fingerprint

    storage = f"journal://{tmp_path}/run.log" if kind == "journal" else postgres_url()
    study = f"race-{uuid.uuid4().hex[:8]}"  # a fresh run (the server outlives the test)
    first = app.build(storage, study=study, n_trials=1)
    lease = Lease(open_storage(storage), f"{study}#run", role="worker",
                  fingerprint=tuner_fingerprint(first)).acquire()
    try:
        other = app.build(storage, study=study, n_trials=1)
        with torch.no_grad():
            other.model[0].weight.add_(1.0)
        with pytest.raises(FingerprintMismatch, match="model weights"):
            other.run_worker(heartbeat_interval=1)
    finally:
        lease.release()
    assert first.run_worker(heartbeat_interval=1).evaluated > 0  # A's run goes on


def test_finalize_waits_for_or_refuses_live_workers(tmp_path):
    storage = f"journal://{tmp_path}/run.log"
    app.build(storage, n_trials=1).run_worker(heartbeat_interval=1)
    lease = Lease(open_storage(storage), "dist#run", role="worker").acquire()
    try:
        with pytest.raises(ConcurrentRunError, match="still work on the run") as info:
            app.build(storage, n_trials=1).finalize()
        assert "--wait" in str(info.value)
        with pytest.raises(ConcurrentRunError):
            app.build(storage, n_trials=1).finalize(wait=True, timeout=0.2, poll_interval=0.05)
        assert [w["role"] for w in run_status(storage, "dist")["workers"]] == ["worker"]
    finally:
        lease.release()
    app.build(storage, n_trials=1).finalize()


def test_finalize_warns_when_workers_stopped_short(tmp_path):
    storage = f"journal://{tmp_path}/run.log"
    app.build(storage, n_trials=4, max_trials=2).run_worker(heartbeat_interval=1)
    with pytest.warns(UserWarning, match="fewer evaluations than the budget"):
        app.build(storage, n_trials=4).finalize()


def test_workers_need_a_shared_storage_and_a_real_device():
    with pytest.raises(ValueError, match="storage URL they all open"):
        app.build(None).run_worker()
    with pytest.raises(StorageError, match="memory"):
        app.build(None).run_worker(storage="sqlite:///:memory:")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="0 CUDA device"):
            resolve_device("cuda:3")
    assert resolve_device("cpu") == torch.device("cpu")


def test_waiting_worker_wakes_when_the_awaited_trial_should_end(monkeypatch):
    """A worker waiting for others' claims backs off, but not past the expected end of the
    first awaited evaluation: its start plus the time the study's recent evaluations took
    from creation to result (else this worker's own), and a little more."""
    import datetime
    import types

    from panther.tuner import worker as worker_mod
    from panther.tuner.search.optuna import EVALUATED_ATTR
    from panther.tuner.storage import OWNER_ATTR, WAITING_SUFFIX

    slept: list[float] = []
    monkeypatch.setattr(worker_mod.time, "sleep", slept.append)
    monkeypatch.setattr(worker_mod.time, "time", lambda: 1000.0)
    w = worker_mod._Worker(None, None, None, None, poll_s=0.02, reap_s=10.0)
    margin = worker_mod._WAKE_MARGIN_S

    def stamp(t: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(t)

    def running(start: float, owner: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(datetime_start=stamp(start), system_attrs={OWNER_ATTR: owner})

    def done(start: float, took: float, evaluated: bool = True) -> types.SimpleNamespace:
        state = optuna.trial.TrialState.COMPLETE
        return types.SimpleNamespace(state=state, datetime_start=stamp(start),
                                     datetime_complete=stamp(start + took),
                                     user_attrs={} if evaluated else {EVALUATED_ATTR: False})

    w._expect([running(999.9, "h:1:a")], [])
    assert w.wake is None  # no evaluation time known yet: plain back-off
    w._sleep(4)
    w.eval_s = 0.2
    # The unclaimed (waiting) trial started earlier but is not evaluated: it does not count.
    w._expect([running(999.5, "h:2:b" + WAITING_SUFFIX), running(999.9, "h:1:a"),
               running(999.95, "h:3:c")], [])
    assert w.wake == pytest.approx(1000.1)
    w._sleep(4)
    w._sleep(4)  # the hint is used once
    w.wake = 999.0  # already overdue: poll at the base interval
    w._sleep(4)
    # Due sooner than the base interval: look just after then.
    w.wake = 1000.01
    w._sleep(1)
    assert slept == pytest.approx([0.16, 0.1 + margin, 0.16, 0.02, 0.01 + margin])
    # The study's recent evaluations (median, cached answers left out) come first.
    study = [done(10.0, 0.3), done(20.0, 0.5), done(30.0, 0.4), done(40.0, 5.0, evaluated=False)]
    w._expect([running(999.9, "h:1:a")], study)
    assert w.wake == pytest.approx(1000.3)


# ---- the original model is measured once per run ----------------------------------------
@pytest.mark.slow
def test_workers_share_one_measurement_of_the_original_model(tmp_path):
    """A relative threshold needs the original model's accuracy: one worker measures it.

    Measuring it takes 2 s, so the other workers start while it is measured; they
    evaluate trials meanwhile and take its accuracy when they need it."""
    storage = f"journal://{tmp_path}/run.log"
    log = tmp_path / "baseline.log"
    results = finish(start_workers(storage, 3, "--n-trials", "7", "--sleep", "0.05",
                                   "--sampler", "random", "--tolerance", "0.03",
                                   "--baseline-log", str(log), "--baseline-sleep", "2"))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    reports = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert [r["baseline_measured"] for r in sorted(reports, key=lambda r: r["ordinal"])] \
        == [True, False, False]
    assert len(log.read_text().split()) == 1  # not once per worker
    check_shared_run(storage, "dist", 7)
    shared = app.build(storage, n_trials=7, sampler="random", tolerance=0.03)
    shared.finalize()
    alone = app.build(None, n_trials=7, sampler="random", tolerance=0.03)
    alone.tune()
    assert evaluated_rows(shared) == evaluated_rows(alone)
    assert shared.report["final_accuracy"] == alone.report["final_accuracy"]


@pytest.mark.slow
def test_a_worker_measures_the_original_model_when_the_first_one_died(tmp_path):
    """The first worker is killed while it measures the original model: the next one
    gives up the trial it ran meanwhile, measures the original model, and finishes the run."""
    storage = f"journal://{tmp_path}/run.log"
    common = ("--n-trials", "7", "--sleep", "0.1", "--sampler", "random", "--tolerance", "0.03")
    first = start_workers(storage, 1, *common, "--baseline-sleep", "600")[0]
    deadline = time.monotonic() + 120
    while len(run_status(storage, "dist")["workers"]) < 1:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    second = start_workers(storage, 1, *common)[0]
    # Once the second worker evaluates trials (its lease shows one), the first is killed.
    while not any(w["current"] for w in run_status(storage, "dist")["workers"]):
        assert time.monotonic() < deadline and second.poll() is None
        time.sleep(0.1)
    first.kill()
    first.communicate(timeout=60)
    rc, out, err = finish([second])[0]
    assert rc == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ordinal"] == 1 and report["baseline_measured"] is True
    check_shared_run(storage, "dist", 7)


# ---- a proposal another worker is evaluating ------------------------------------------
class _Scripted(optuna.samplers.BaseSampler):
    """Proposes ``low_rank`` values from a list, in order (one per trial)."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.values.pop(0)


def test_a_proposal_evaluated_elsewhere_is_redrawn_then_waited_for(tmp_path):
    """Another worker evaluates low_rank=2. This worker's sampler proposes 2, 2, 2, then 4:
    the first two proposals are given up for new ones at once (no idle wait); the third,
    past ``_REDRAWS`` in a row, is waited for. The other evaluation then fails, so this
    worker evaluates 2 itself, then 4 (the budget: 2)."""
    import threading

    from torch import nn

    from panther.tuner import Int, LayerConfig, OptunaSearch, SKAutoTuner
    from panther.tuner import worker as worker_mod
    from panther.tuner.fingerprint import tuner_fingerprint
    from panther.tuner.storage import run_study_name

    assert worker_mod._REDRAWS == 2
    storage = f"journal://{tmp_path}/run.log"
    search = OptunaSearch(n_trials=2, sampler=_Scripted([2, 2, 2, 4]), study_name="redraw",
                          storage=storage, load_if_exists=True)
    torch.manual_seed(0)
    tuner = SKAutoTuner(nn.Sequential(nn.Linear(32, 32)),
                        LayerConfig(["0"], {"low_rank": Int(1, 8)}, copy_weights=False),
                        lambda model: 1.0, search_algorithm=search, verify=False,
                        skip_costlier=False)
    # The other worker: a live lease of this run and its claimed RUNNING trial of low_rank=2.
    opened = open_storage(storage)
    other = Lease(opened, run_study_name("redraw"), fingerprint=tuner_fingerprint(tuner)).acquire()
    group = optuna.create_study(storage=opened, study_name="redraw/0", direction="maximize")
    template = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, params={"low_rank": 2},
        distributions={"low_rank": optuna.distributions.IntDistribution(1, 8)},
        system_attrs={OWNER_ATTR: other.id})
    theirs = opened.create_new_trial(group._study_id, template_trial=template)

    def fail_theirs_once_waited_for() -> None:
        # Once this worker has given up two proposals, its third one waits: then the
        # other worker's evaluation fails.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            trials = open_storage(storage).get_all_trials(group._study_id)
            if len(trials) >= 4:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        open_storage(storage).set_trial_state_values(theirs, optuna.trial.TrialState.FAIL)

    thread = threading.Thread(target=fail_theirs_once_waited_for)
    thread.start()
    try:
        report = tuner.run_worker(storage, heartbeat_interval=1, poll_interval=0.02)
    finally:
        thread.join()
        other.release()
    assert (report.evaluated, report.redrawn) == (2, 2)
    trials = study_trials(storage, "redraw", "0")
    assert [(t.params["low_rank"], t.state.name) for t in trials] == [
        (2, "FAIL"), (2, "FAIL"), (2, "FAIL"), (2, "COMPLETE"), (4, "COMPLETE")]
    for given_up in trials[1:3]:
        assert "a new one was proposed" in given_up.user_attrs["panther_error"]
    assert [t.number for t in evaluated_trials(trials)] == [3, 4]


def test_the_last_round_is_read_afresh():
    """After its own trial a worker reuses the read made when it asked, except when the
    budget left is at most one evaluation per running trial: then a stale "not full" would
    cost a proposal given up at the end of the run."""
    from panther.tuner import worker as worker_mod

    state = optuna.trial.TrialState
    done = optuna.trial.create_trial(state=state.COMPLETE, value=1.0)
    running = optuna.trial.create_trial(state=state.RUNNING)
    work = worker_mod._GroupWork.__new__(worker_mod._GroupWork)
    work._complete, work._counted = {}, (None, {})  # counts()' memo (no run needed here)
    work.budget = 8
    assert work.last_round([done] * 4 + [running] * 2)  # 2 left, 2 running
    assert not work.last_round([done] * 3 + [running] * 2)  # 3 left, 2 running
    assert work.last_round([done] * 8)
    work.budget = None  # no budget: the run ends when the space is used up
    assert not work.last_round([done] * 4 + [running] * 2)


def test_group_counts_are_exact_across_reads():
    """counts() remembers what each completed trial adds and the last read's answer; the
    figures must equal a count from scratch on every read, old or new."""
    from panther.tuner import worker as worker_mod
    from panther.tuner.search.optuna import EVALUATED_ATTR, EXTRA_ATTR

    state = optuna.trial.TrialState
    dist = {"r": optuna.distributions.IntDistribution(1, 8)}

    def trial(number, st, r=1, cached=False):
        attrs = {}
        if cached:
            attrs = {EVALUATED_ATTR: False, EXTRA_ATTR: {"panther_row": {"status": "cached"}}}
        t = optuna.trial.create_trial(state=st, value=1.0 if st == state.COMPLETE else None,
                                      params={"r": r} if st != state.RUNNING else {},
                                      distributions=dist if st != state.RUNNING else {},
                                      user_attrs=attrs)
        t.number = number
        return t

    work = worker_mod._GroupWork.__new__(worker_mod._GroupWork)
    work._complete, work._counted = {}, (None, {})
    first = [trial(0, state.COMPLETE, 1), trial(1, state.COMPLETE, 1, cached=True),
             trial(2, state.RUNNING), trial(3, state.FAIL, 2)]
    assert work.counts(first) == {"evaluated": 1, "proposals": 3, "handled": 1}
    answer = work.counts(first)
    answer["evaluated"] = 99  # a caller's change must not reach the next answer
    assert work.counts(first)["evaluated"] == 1
    # A newer read: the running trial completed, two more trials
    second = first[:2] + [trial(2, state.COMPLETE, 3), first[3], trial(4, state.COMPLETE, 1),
                          trial(5, state.RUNNING)]
    assert work.counts(second) == {"evaluated": 3, "proposals": 5, "handled": 2}
    assert work.counts(first) == {"evaluated": 1, "proposals": 3, "handled": 1}  # an older read


def test_a_joining_worker_reads_each_group_study_once_before_its_first_trial(tmp_path, monkeypatch):
    """Joining reads the study (reaping dead workers' trials, resuming completed ones); the
    first proposal decides on that read instead of reading again twice (for the budget,
    then in Optuna's ask)."""
    from panther.tuner.storage_view import ProcessStorage

    storage = f"journal://{tmp_path}/run.log"
    app.build(storage, n_trials=1).run_worker(heartbeat_interval=1)  # the studies exist
    events: list[tuple[str, int]] = []
    read_all, create = ProcessStorage._read_all, ProcessStorage.create_new_trial

    def reading(self, study_id):
        events.append(("read", study_id))
        return read_all(self, study_id)

    def creating(self, study_id, template_trial=None):
        events.append(("create", study_id))
        return create(self, study_id, template_trial)

    monkeypatch.setattr(ProcessStorage, "_read_all", reading)
    monkeypatch.setattr(ProcessStorage, "create_new_trial", creating)
    report = app.build(storage, n_trials=2).run_worker(heartbeat_interval=1)
    assert report.evaluated == 2  # one more per group
    groups = {study_id for kind, study_id in events if kind == "create"} - {
        events[0][1]}  # the run study (its lease) is created first
    assert len(groups) == 2, events
    for study_id in groups:
        mine = [kind for kind, sid in events if sid == study_id]
        assert mine.index("create") == 1, (study_id, mine)  # one read, then the trial
