"""Storage URLs, up-front checks, process leases and stale-trial reaping (panther.tuner.storage),
and study fingerprints (panther.tuner.fingerprint)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner
from panther.tuner.fingerprint import (
    FINGERPRINT_ATTR,
    FingerprintMismatch,
    fingerprint_differences,
    model_fingerprint,
)
from panther.tuner.storage import (
    OWNER_ATTR,
    RETRY_ATTR,
    ConcurrentRunError,
    Lease,
    StorageError,
    check_storage,
    live_leases,
    open_storage,
    parse_storage_url,
    reap_stale_trials,
    run_study_name,
)

ROOT = Path(__file__).resolve().parents[1]
INT = optuna.distributions.IntDistribution(0, 10)


# ---- URLs ------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "kind", "path"), [
    ("journal:///tmp/run.log", "journal", "/tmp/run.log"),
    ("journal:runs/run.log", "journal", "runs/run.log"),
    ("runs/run.log", "journal", "runs/run.log"),
    ("sqlite:///runs/run.db", "rdb", "runs/run.db"),
    ("sqlite:////abs/run.db", "rdb", "/abs/run.db"),
])
def test_parse_storage_url_forms(url, kind, path):
    spec = parse_storage_url(url)
    assert spec.kind == kind and str(spec.path) == path and spec.shared


def test_parse_storage_url_hides_password_and_picks_an_installed_driver():
    spec = parse_storage_url("postgresql://panther:secret@127.0.0.1:5432/panther")
    assert "secret" not in spec.display and "***" in spec.display
    assert spec.url.startswith(("postgresql+psycopg2://", "postgresql+psycopg://"))
    assert not parse_storage_url("sqlite:///:memory:").shared


@pytest.mark.parametrize(("url", "words"), [
    ("nonsense", "not a valid URL"),
    ("foo://host/x", "unknown database 'foo'"),
    ("", "non-empty URL"),
    ("journal:", "names no file"),
])
def test_malformed_urls_name_the_url_and_the_forms(url, words):
    with pytest.raises(StorageError, match=words) as info:
        parse_storage_url(url)
    assert "journal:///" in str(info.value)  # the accepted forms are listed


def test_unusable_files_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(StorageError, match="does not exist") as info:
        check_storage(f"sqlite:///{tmp_path}/missing/run.db")
    assert f"{tmp_path}/missing" in str(info.value)
    with pytest.raises(StorageError, match="is not a file"):
        check_storage(f"journal://{tmp_path}")
    unreachable = "postgresql://panther:pw@127.0.0.1:1/panther"
    with pytest.raises(StorageError, match="cannot connect") as info:
        check_storage(unreachable)
    assert "127.0.0.1:1" in str(info.value) and "pw" not in str(info.value)
    # Opening it without the test connection (as a worker does) says the same.
    with pytest.raises(StorageError, match="cannot connect to the database server") as info:
        open_storage(check_storage(unreachable, connect=False))
    assert "127.0.0.1:1" in str(info.value) and "pw" not in str(info.value)
    assert "make postgres" in str(info.value)


def test_bad_storage_fails_at_construction_before_the_baseline(tmp_path):
    """Issue 15 item 7: the error names the URL and comes before any evaluation."""
    calls = []
    with pytest.raises(StorageError, match="missing"):
        search = OptunaSearch(n_trials=2, storage=f"sqlite:///{tmp_path}/missing/x.db")
        SKAutoTuner(nn.Sequential(nn.Linear(8, 8)), LayerConfig(["0"], {"low_rank": [2]}),
                    lambda m: calls.append(1) or 1.0, search_algorithm=search).tune()
    assert calls == []


def test_cli_exits_2_naming_the_storage(tmp_path, monkeypatch, capsys):
    from panther.cli import main

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    config = tmp_path / "c.toml"
    config.write_text(textwrap.dedent(f"""
        model = "tiny_model:build_model"
        model_kwargs = {{ hidden = 16, epochs = 1 }}
        accuracy = "tiny_model:accuracy"
        [[layers]]
        selector = {{ type = "Linear", range = [0, 1] }}
        params = {{ num_terms = [1], low_rank = [2] }}
        [search]
        storage = "sqlite:///{tmp_path}/nowhere/run.db"
    """))
    assert main(["tune", str(config), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/nowhere" in err and "search" in err


# ---- leases ---------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    import optuna
    from panther.tuner.storage import Lease, open_storage, OWNER_ATTR
    storage = open_storage(sys.argv[2])
    lease = Lease(storage, sys.argv[3], role=sys.argv[4], interval=1).acquire()
    study = optuna.create_study(storage=storage, study_name="net/fc", load_if_exists=True)
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 10)})
    storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, lease.id)
    print("ready", trial.number, flush=True)
    time.sleep(120)
""")


def _holder(tmp_path: Path, url: str, role: str = "tune") -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT), url, "net#run", role],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PANTHER_DISABLE_PLUGIN_AUTOLOAD": "1"})
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    return proc


def test_live_process_is_refused_and_its_trials_kept_then_reaped_when_it_dies(tmp_path):
    """Issue 15 item 5: a second process is told who holds the run; resume never fails the
    RUNNING trial of a live process, and does fail and re-enqueue it once that process died."""
    url = f"journal://{tmp_path}/run.log"
    proc = _holder(tmp_path, url)
    try:
        storage = open_storage(url)
        (lease,) = live_leases(storage, "net#run")
        assert lease.pid == proc.pid and lease.role == "tune"
        search = OptunaSearch(n_trials=2, study_name="net", storage=url, load_if_exists=True)
        with pytest.raises(ConcurrentRunError, match=f"tune pid {proc.pid}") as info:
            search.spawn("fc").initialize({"x": [1, 2]})
        assert "another study_name" in str(info.value)
        study = optuna.load_study(study_name="net/fc", storage=storage)
        assert reap_stale_trials(study, "net#run", min_age=0) == []
        assert study.trials[0].state.name == "RUNNING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert live_leases(storage, "net#run") == []
    study = optuna.load_study(study_name="net/fc", storage=storage)
    assert reap_stale_trials(study, "net#run", min_age=0) == [0]
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"]
    assert study.trials[1].user_attrs[RETRY_ATTR] == 0
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params


def test_a_worker_is_refused_while_a_single_process_tune_runs(tmp_path):
    url = f"journal://{tmp_path}/run.log"
    proc = _holder(tmp_path, url, role="tune")
    try:
        worker = Lease(open_storage(url), "net#run", role="worker").acquire()
        from panther.tuner.storage import check_no_conflict

        with pytest.raises(ConcurrentRunError, match="single-process tune"):
            check_no_conflict(worker, url)
        worker.release()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_lease_beats_and_release(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/run.db", heartbeat_interval=1)
    lease = Lease(storage, run_study_name("r"), interval=0.05).acquire()
    first = live_leases(storage, "r#run")[0].beat
    time.sleep(0.3)
    assert live_leases(storage, "r#run")[0].beat > first
    lease.release()
    assert live_leases(storage, "r#run") == []


def test_journal_codes_match_optuna():
    """The journal's sync policy names Optuna's operation codes: they must be Optuna's."""
    from optuna.storages.journal._storage import JournalOperation

    from panther.tuner import storage as st

    assert st._UNSYNCED_OPS == {JournalOperation.SET_TRIAL_PARAM,
                                JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
                                JournalOperation.SET_TRIAL_USER_ATTR,
                                JournalOperation.SET_TRIAL_SYSTEM_ATTR}
    assert st._CREATE_TRIAL_OP == JournalOperation.CREATE_TRIAL
    assert st._RUNNING_STATE == optuna.trial.TrialState.RUNNING


def test_journal_syncs_every_trial_end_and_skips_mid_trial_writes(tmp_path, monkeypatch):
    """A COMPLETE (or FAIL, or added finished) trial is on disk when its call returns; the
    writes in the middle of a trial are synced with its end, not one by one."""
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    study = optuna.create_study(storage=open_storage(f"journal:///{tmp_path}/run.log"),
                                study_name="s")
    synced.clear()
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    trial.set_user_attr("a", 1)
    trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, "me")
    assert synced == []  # created RUNNING, a parameter, two attributes: mid-trial
    study.tell(trial, 1.0)
    assert len(synced) == 1
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert len(synced) == 2
    study.add_trial(optuna.trial.create_trial(value=2.0))
    study.enqueue_trial({"x": 3})
    assert len(synced) == 4  # a finished trial and a waiting one are created synced
    reread = optuna.load_study(storage=open_storage(f"journal:///{tmp_path}/run.log"),
                               study_name="s")
    assert [t.state.name for t in reread.trials] == ["COMPLETE", "FAIL", "COMPLETE", "WAITING"]
    assert reread.trials[0].user_attrs == {"a": 1}


def test_own_leftover_trials_are_reaped_on_resume(tmp_path):
    """A search interrupted in this process leaves its trial RUNNING; the next resume in the
    same process fails and re-enqueues it (nobody else can be evaluating it)."""
    url = f"journal://{tmp_path}/run.log"
    first = OptunaSearch(n_trials=3, study_name="net", storage=url, load_if_exists=True, seed=0)
    child = first.spawn("fc")
    child.initialize({"x": [1, 2, 3, 4]})
    child.get_next_params()  # asked, never told: "interrupted"
    first.close()
    second = OptunaSearch(n_trials=3, study_name="net", storage=url, load_if_exists=True, seed=0)
    again = second.spawn("fc")
    again.initialize({"x": [1, 2, 3, 4]})
    trials = optuna.load_study(study_name="net/fc", storage=open_storage(url)).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert OWNER_ATTR in trials[0].system_attrs
    second.close()


# ---- fingerprints -----------------------------------------------------------------------
def test_fingerprint_names_shapes_and_weights():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(32, 64))
    b = nn.Sequential(nn.Linear(32, 48))
    c = nn.Sequential(nn.Linear(32, 64))
    shapes = fingerprint_differences({"model": model_fingerprint(a)}, {"model": model_fingerprint(b)})
    assert shapes == ["model parameter shapes/dtypes: 0.weight (64, 32) float32 -> (48, 32) "
                      "float32, 0.bias (64,) float32 -> (48,) float32"]
    weights = fingerprint_differences({"model": model_fingerprint(a)}, {"model": model_fingerprint(c)})
    assert len(weights) == 1 and "model weights" in weights[0]
    assert model_fingerprint(a) == model_fingerprint(a)
    assert model_fingerprint(nn.Linear(2, 2).to(torch.bfloat16))["weights_digest"]


def _toy_tuner(url: str, seed: int, space: dict) -> SKAutoTuner:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    search = OptunaSearch(n_trials=2, study_name="fp", storage=url, load_if_exists=True, seed=0)
    return SKAutoTuner(model, LayerConfig(["0"], space), lambda m: 1.0,
                       search_algorithm=search, verify=False)


def test_resuming_with_other_weights_or_space_is_refused(tmp_path):
    """Issue 15 item 4: same storage and study name, different weights: refused, naming it."""
    url = f"sqlite:///{tmp_path}/fp.db"
    space = {"num_terms": [1], "low_rank": [2, 4]}
    _toy_tuner(url, 0, space).tune()
    stored = optuna.load_study(study_name="fp/0", storage=url).user_attrs[FINGERPRINT_ATTR]
    assert stored["model"]["class"] == "torch.nn.modules.container.Sequential"
    _toy_tuner(url, 0, space).tune()  # the same model and space resume fine
    with pytest.raises(FingerprintMismatch, match="model weights"):
        _toy_tuner(url, 1, space).tune()
    with pytest.raises(FingerprintMismatch, match="search space of group '0'.*low_rank"):
        _toy_tuner(url, 0, {"num_terms": [1], "low_rank": [2, 6]}).tune()


def test_a_study_is_not_shared_between_processes_through_a_missing_fingerprint(tmp_path):
    """Studies written before fingerprints existed get one on the first resume."""
    url = f"sqlite:///{tmp_path}/old.db"
    optuna.create_study(study_name="fp/0", storage=url, direction="maximize")
    _toy_tuner(url, 0, {"num_terms": [1], "low_rank": [2, 4]}).tune()
    assert FINGERPRINT_ATTR in optuna.load_study(study_name="fp/0", storage=url).user_attrs


def test_tune_with_a_relative_storage_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tuner = _toy_tuner("journal:run.log", 0, {"num_terms": [1], "low_rank": [2, 4]})
    tuner.tune()
    assert (tmp_path / "run.log").exists()
    assert isinstance(open_storage("journal:run.log").inner, optuna.storages.JournalStorage)


def test_a_reap_with_nothing_running_reads_the_study_only(tmp_path):
    """No RUNNING trial, nothing to judge: no heartbeat and no lease is read (a run's first
    reap, which every worker makes on joining)."""
    from storage_helpers import counting

    from panther.tuner.storage import reap_stale_trials

    view = open_storage(f"sqlite:///{tmp_path}/run.db", heartbeat_interval=5)
    study = optuna.create_study(storage=view, study_name="quiet/0")
    study.tell(study.ask(), 1.0)
    with counting(view) as counts:
        assert reap_stale_trials(study, "quiet#run") == []
    assert counts["statements"] == 2  # the study's trials and their children: one read


def test_psycopg2_engines_skip_the_hstore_lookup():
    """Optuna stores no hstore: psycopg2's type lookup would cost every worker's first
    connection a transaction of its own. Other drivers do not take the setting."""
    from panther.tuner.storage import _engine_kwargs, parse_storage_url

    for url in ("postgresql://u:p@h/db", "postgresql+psycopg2://u:p@h/db"):
        assert _engine_kwargs(parse_storage_url(url))["use_native_hstore"] is False
    assert "use_native_hstore" not in _engine_kwargs(parse_storage_url("postgresql+pg8000://u:p@h/db"))
    assert "use_native_hstore" not in _engine_kwargs(parse_storage_url("sqlite:///x.db"))
