"""Every statement of docs/guarantees.md, tested.

Each section of the page has its tests here, in the page's order. Where an existing test
already proves a statement it is named in a comment instead of repeated; the tests below
add what was missing: real signals (SIGINT, SIGKILL) delivered to real processes, a disk
that is full (``/dev/full``), a manifest that tries to make panther import something, a
run that must not write outside its output folder, and two live processes on one storage.

Processes that are killed or interrupted run in subprocesses, so a signal never reaches
the test runner itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from panther.tuner import load_tuning_results
from panther.tuner.results import LayerChoice, TuningResults

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _python(code: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "panther.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


# A model module for the CLI runs: one Linear(64, 64) tuned over four ranks. Its accuracy
# function can send a signal to its own process on a given call, once (a marker file
# remembers that it did), so a re-run of the same command goes through.
MODEL = """
import os, pathlib, signal
import torch
from torch import nn

HERE = pathlib.Path(__file__).parent
calls = 0

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64)).eval()

def accuracy(model):
    global calls
    calls += 1
    with open(HERE / "calls.log", "a") as fh:
        fh.write(f"{{os.getpid()}} {{calls}}\\n")
    if calls == {at} and not (HERE / "signalled").exists():
        (HERE / "signalled").write_text("once")
        os.kill(os.getpid(), signal.{sig})
    return 1.0 if not any(type(m).__name__.startswith("SK") for m in model.modules()) else 0.99
"""


def _cli_run(folder: Path, sig: str, at: int, storage: str = "") -> Path:
    """Write the model module and a config beside it; return the config path."""
    (folder / "guarded_model.py").write_text(MODEL.format(at=at, sig=sig))
    config = folder / "run.toml"
    config.write_text(textwrap.dedent("""
        model = "guarded_model:build"
        accuracy = "guarded_model:accuracy"
        [[layers]]
        selector = "2"
        params = { low_rank = [2, 4, 6, 8] }
        [search]
        backend = "optuna"
        sampler = "random"
        n_trials = 4
        seed = 0
    """) + storage)
    return config


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- Ctrl-C ----------------------------------------------------------------------------------
# "The model is left exactly as it was" and "the trials finished so far are kept" are also
# proved, with a KeyboardInterrupt raised inside the accuracy function, by
# test_tuner.py::test_keyboard_interrupt_restores_model_keeps_results_and_propagates,
# test_tuner.py::test_keyboard_interrupt_during_verification_keeps_every_trial and
# test_tuner_e2e.py::test_failure_and_interrupt_restore_real_model_bit_for_bit.
# "A later run resumes from the storage": test_tuner.py::test_resume_after_interrupt_with_sqlite.


@pytest.mark.slow  # subprocesses that import torch and tune
def test_sigint_at_any_moment_leaves_the_model_exactly_as_it_was(tmp_path):
    """Real SIGINTs, timed to land anywhere in tune() (in the tuner's code, not only in ours)."""
    proc = _python("""
        import copy, os, random, signal, threading, time, warnings
        import optuna  # imported before any signal: a half-imported Optuna is a separate issue
        import torch
        from torch import nn
        from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

        warnings.simplefilter("ignore")
        torch.manual_seed(0)

        def accuracy(m):
            with torch.no_grad():
                return float(1.0 - (m(x) - ref).abs().mean())

        x = torch.randn(64, 32)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.Dropout(0.1),
                              nn.Linear(64, 8))
        model[3].eval()  # mixed train/eval modes must come back as they were
        with torch.no_grad():
            ref = model(x)
        state = copy.deepcopy(model.state_dict())
        modes = [m.training for m in model.modules()]
        # How long an uninterrupted (warm) run takes, to spread the signals over it.
        configs = TuningConfigs([LayerConfig(["0", "2", "4"], {"low_rank": Categorical([2, 4, 8])})])
        for _ in range(2):
            start = time.perf_counter()
            SKAutoTuner(model, configs, accuracy, search_algorithm=OptunaSearch(n_trials=3, seed=0),
                        accuracy_tolerance=0.5, optmization_eval_func=lambda m: 1.0).tune()
            span = time.perf_counter() - start
        rng = random.Random(0)
        interrupted = 0
        for i in range(12):
            tuner = SKAutoTuner(model, configs, accuracy, search_algorithm=OptunaSearch(n_trials=3, seed=i),
                                accuracy_tolerance=0.5, optmization_eval_func=lambda m: 1.0)
            timer = threading.Timer(rng.uniform(0, 0.9 * span), os.kill, (os.getpid(), signal.SIGINT))
            try:
                timer.start()
                try:
                    tuner.tune()
                finally:
                    timer.cancel()
                    timer.join()
            except KeyboardInterrupt:
                interrupted += 1
                tuner.get_results_dataframe()  # what was found so far is still there
            assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), i
            assert [m.training for m in model.modules()] == modes, i
            assert not any(type(m).__name__.startswith("SK") for m in model.modules()), i
        print("span", span, "interrupted", interrupted)
    """, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interrupted" in proc.stdout
    # Most signals land inside tune(); the invariants above hold for every one of them.
    assert int(proc.stdout.split()[-1]) >= 3, proc.stdout


@pytest.mark.slow  # subprocesses that import torch and tune
def test_sigint_to_panther_tune_writes_the_trials_so_far_and_exits_130(tmp_path):
    # Also: test_cli.py::test_ctrl_c_during_tune_still_writes_results (KeyboardInterrupt raised
    # by the accuracy function, in-process).
    config = _cli_run(tmp_path, "SIGINT", at=3)
    out = tmp_path / "out"
    proc = _cli("tune", str(config), "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    results = load_tuning_results(out / "results.json")
    assert 1 <= len(results.trials) < 4
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True


# ---- SIGKILL, a crashed process ----------------------------------------------------------------
@pytest.mark.slow  # subprocesses that import torch and tune
def test_sigkill_then_the_same_command_resumes_from_the_storage(tmp_path):
    """A killed run leaves no half-written file; with a storage the re-run finishes the budget."""
    db = tmp_path / "study.db"
    config = _cli_run(tmp_path, "SIGKILL", at=3,
                      storage=f'storage = "sqlite:///{db}"\nstudy_name = "kill"\nload_if_exists = true\n')
    out = tmp_path / "out"
    killed = _cli("tune", str(config), "--output", str(out), cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Nothing in the output folder: results are written at the end (or on Ctrl-C), never half.
    assert out.is_dir() and not list(out.iterdir())
    assert db.is_file()
    resumed = _cli("tune", str(config), "--output", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    df = load_tuning_results(out / "results.json").to_dataframe()
    evaluated = df[~df["status"].isin(["cached", "skipped"])]
    # The trials finished before the kill count: exactly n_trials evaluations, none twice.
    assert len(evaluated) == 4
    assert evaluated["low_rank"].is_unique
    pids = {line.split()[0] for line in (tmp_path / "calls.log").read_text().splitlines()}
    assert len(pids) == 2  # both processes evaluated: the first one's work was not redone


# ---- a crashed evaluation ----------------------------------------------------------------------
# "Only that trial fails, its error is recorded, the model is restored":
# test_tuner.py::test_failures_are_recorded_and_model_restored_bit_for_bit.
# "When every trial failed, the report says so": test_cli.py::test_report_says_when_every_trial_crashed.


# ---- a full disk -------------------------------------------------------------------------------
# "The output folder is checked before tuning":
# test_cli.py::test_unusable_output_is_refused_before_tuning.

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def _small_results() -> TuningResults:
    layer = nn.Linear(32, 64)
    choice = LayerChoice.for_module("0", "Linear", layer, {"num_terms": 1, "low_rank": 4}, seed=1)
    return TuningResults(selection={"0": choice}, trials=[{"layer_name": "0", "params": {"low_rank": 4}}])


@needs_dev_full
def test_a_full_disk_while_saving_keeps_the_previous_manifest(tmp_path):
    path = tmp_path / "results.json"
    _small_results().save(path)
    before = path.read_bytes()
    tmp = tmp_path / "results.json.tmp"
    tmp.symlink_to("/dev/full")  # every write to the temporary file fails with ENOSPC
    bigger = _small_results()
    bigger.trials *= 50
    with pytest.raises(OSError):
        bigger.save(path)
    assert path.read_bytes() == before
    assert not tmp.exists() and not tmp.is_symlink()  # no half-written file left behind
    assert load_tuning_results(path).selection["0"].params["low_rank"] == 4


@needs_dev_full
def test_a_full_disk_at_the_end_of_panther_tune_rescues_the_results(tmp_path, monkeypatch, capsys):
    # Also: test_cli.py::test_output_lost_during_the_run_is_saved_to_a_named_rescue_folder.
    from panther.cli import main

    (tmp_path / "disk_model.py").write_text(textwrap.dedent("""
        import pathlib
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64)).eval()

        def accuracy(model):
            # The disk fills up during the run: the manifest's write hits ENOSPC.
            tmp = pathlib.Path(__file__).parent / "out" / "results.json.tmp"
            if not tmp.is_symlink():
                tmp.symlink_to("/dev/full")
            return 1.0
    """))
    config = tmp_path / "disk.toml"
    config.write_text(textwrap.dedent("""
        model = "disk_model:build"
        accuracy = "disk_model:accuracy"
        [[layers]]
        selector = "2"
        params = { low_rank = [2, 4] }
        [search]
        backend = "grid"
    """))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["tune", str(config), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1, err
    (rescue,) = work.glob("panther-tune-rescue-*")
    assert str(rescue.resolve()) in err and "No space left" in err
    assert len(load_tuning_results(rescue / "results.json").trials) == 2


# ---- what a manifest may and may not do ----------------------------------------------------------
# "Loading never unpickles": test_tuner.py::test_load_refuses_pickle_and_garbage and
# test_cli.py::test_show_refuses_a_pickle. "Only the same architecture" (class and shapes),
# "parameters bounded by the layer's dimensions", "strict types", "bounded nesting",
# "every malformed manifest is a ValueError": tests/test_manifest.py.


def test_a_manifest_never_makes_panther_import_anything(tmp_path):
    proc = _python(f"""
        import json, sys
        from torch import nn
        from panther.tuner import load_tuning_results
        from panther.tuner.results import LayerChoice, TuningResults

        choice = LayerChoice.for_module("0", "Linear", nn.Linear(8, 8), {{"low_rank": 2}})
        data = TuningResults(selection={{"0": choice}}).to_dict()
        data["selection"]["0"]["layer_type"] = "antigravity"
        data["info"] = {{"model_class": "this:antigravity", "__reduce__": "os.system"}}
        with open({str(tmp_path / 'm.json')!r}, "w") as fh:
            json.dump(data, fh)
        results = load_tuning_results({str(tmp_path / 'm.json')!r})
        try:
            results.apply(nn.Sequential(nn.Linear(8, 8)))
        except ValueError as exc:
            print("refused:", exc)
        assert "antigravity" not in sys.modules and "this" not in sys.modules
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "refused: unknown layer type 'antigravity'" in proc.stdout


def test_apply_is_all_or_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    good = LayerChoice.for_module("0", "Linear", model[0], {"low_rank": 4}, seed=1)
    wrong = LayerChoice.for_module("2", "Linear", nn.Linear(64, 64), {"low_rank": 4}, seed=1)
    results = TuningResults(selection={"0": good, "2": wrong})
    with pytest.raises(ValueError, match="other shapes"):
        results.apply(model, inplace=True)
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Sequential) for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    copy = TuningResults(selection={"0": good}).apply(model)  # by default a tuned copy
    assert type(copy[0]).__name__ == "SKLinear" and type(model[0]) is nn.Linear


@pytest.mark.slow  # subprocesses that import torch and tune
def test_panther_tune_writes_nothing_outside_its_output_folder(tmp_path):
    config = _cli_run(tmp_path, "SIGINT", at=10**6)  # never signals
    (tmp_path / "signalled").write_text("never")
    work = tmp_path / "cwd"
    work.mkdir()
    db = tmp_path / "named.db"
    with open(config, "a") as fh:
        fh.write(f'storage = "sqlite:///{db}"\nstudy_name = "quiet"\n')
    before = _tree(tmp_path)
    proc = _cli("tune", str(config), "--output", str(tmp_path / "out"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = _tree(tmp_path) - before
    allowed = ("out", "named.db", "__pycache__", "calls.log")  # calls.log: the test model's own log
    assert all(p.split(os.sep)[0] in allowed for p in new), sorted(new)
    assert not list(work.iterdir())


# ---- concurrent runs ---------------------------------------------------------------------------
@pytest.mark.slow  # subprocesses that import torch and tune
def test_a_second_live_process_on_one_storage_is_refused_clearly(tmp_path):
    """Two ``tune()`` processes on one study: the second stops with a message, the first finishes."""
    from panther.tuner import storage as storage_module

    assert hasattr(storage_module, "ConcurrentRunError")
    script = f"""
        import os, pathlib, sys, time
        import torch
        from torch import nn
        from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

        here = pathlib.Path({str(tmp_path)!r})
        role = sys.argv[1]

        def accuracy(m):
            if role == "first":
                (here / "first-started").write_text("yes")
                deadline = time.monotonic() + 120
                while not (here / "go").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            return 1.0

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64))
        search = OptunaSearch(n_trials=2, seed=0, storage="sqlite:///{tmp_path / 'shared.db'}",
                              study_name="shared", load_if_exists=True)
        tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("2", {{"low_rank": Categorical([2, 4])}})]),
                            accuracy, search_algorithm=search)
        try:
            tuner.tune()
        except Exception as exc:
            print(type(exc).__name__, exc)
            sys.exit(3)
        print("finished")
    """
    args = [sys.executable, "-c", textwrap.dedent(script)]
    first = subprocess.Popen([*args, "first"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "first-started").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first process never started tuning"
            time.sleep(0.05)
        second = subprocess.run([*args, "second"], cwd=tmp_path, env=_env(), capture_output=True,
                                text=True, timeout=180)
    finally:
        (tmp_path / "go").write_text("go")
        out, err = first.communicate(timeout=180)
    assert second.returncode == 3, second.stderr[-3000:]
    assert "ConcurrentRunError" in second.stdout and "another live process" in second.stdout
    assert first.returncode == 0 and "finished" in out, err[-3000:]
