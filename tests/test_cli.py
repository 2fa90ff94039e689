"""``panther-tune``: the CLI driven as a user would, plus its config-error messages.

The end-to-end runs go through a subprocess (``python -m panther.cli``) so they
work before the console script is installed; the many config-error cases call
``main()`` in-process, which is the same code path without the start-up cost.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panther.cli import ConfigError, load_tune_config, main
from panther.tuner.settings import AccuracyConstraint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# Small enough for a few seconds per run; the factory lives in examples/tiny_model.py.
# Every rank saves work in both layers (32 -> 64 breaks even near 10), so no proposal is
# skipped by the cost model.
TINY_CONFIG = """
model = "tiny_model:build_model"
model_kwargs = {{ hidden = 64, epochs = 4 }}
accuracy = "tiny_model:accuracy"
speed = {{ evaluator = "flops", input_shape = [1, 32], inverse = true }}
threshold = {{ drop = 0.05 }}

[[layers]]
selector = {{ type = "Linear", range = [0, 2] }}
params = {{ num_terms = [1], low_rank = {{ type = "int", low = 2, high = 8, step = 2 }} }}

[search]
backend = "{backend}"
n_trials = 3
seed = 0
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(EXAMPLES), env.get("PYTHONPATH", "")])
    env["MPLBACKEND"] = "Agg"
    # One thread per process: the test machine is shared, and oversubscribed BLAS threads
    # make small runs much slower without changing any result the tests check.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m panther.cli ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "panther.cli", *args],
        cwd=cwd or ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
    )


def write_config(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real ``panther-tune tune`` run shared by the tests that inspect its outputs."""
    folder = tmp_path_factory.mktemp("tune")
    config = write_config(folder, TINY_CONFIG.format(backend="optuna"))
    out = folder / "out"
    proc = run_cli("tune", str(config), "--output", str(out))
    return out, proc


# ---- help --------------------------------------------------------------------------------
def test_help_of_every_subcommand(capsys):
    for args in ([], ["demo"], ["tune"], ["plugins"], ["show"], ["plot"]):
        with pytest.raises(SystemExit) as exc:
            main([*args, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "usage: panther-tune" in text
    proc = run_cli("--help")
    assert proc.returncode == 0
    for sub in ("demo", "tune", "plugins", "show", "plot"):
        assert sub in proc.stdout


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# ---- tune, show, plot --------------------------------------------------------------------
def test_tune_writes_every_output(tuned_run):
    out, proc = tuned_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("results.json", "results.csv", "tuned_model.pt", "summary.json"):
        assert (out / name).is_file(), name
    pngs = sorted((out / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"]["accuracy"] > 0.5
    assert summary["after"]["params"] <= summary["before"]["params"]
    assert "accuracy" in proc.stdout and "before" in proc.stdout and "after" in proc.stdout
    assert str(out.resolve()) in proc.stdout


def test_tuned_state_dict_matches_results_rebuilt_on_a_fresh_model(tuned_run, monkeypatch):
    """The saved manifest + a fresh model reproduce the saved tuned state exactly."""
    out, proc = tuned_run
    assert proc.returncode == 0, proc.stderr
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import tiny_model

    from panther.tuner import load_tuning_results

    results = load_tuning_results(out / "results.json")
    rebuilt = results.apply(tiny_model.build_model(hidden=64, epochs=4))
    saved = torch.load(out / "tuned_model.pt", weights_only=True)
    state = rebuilt.state_dict()
    assert set(saved) == set(state)
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, msg=key)
    summary = json.loads((out / "summary.json").read_text())
    assert {row["layer"] for row in summary["layers"]} == set(results.selection)


def test_show_and_plot_a_saved_run(tuned_run, tmp_path):
    out, proc = tuned_run
    assert proc.returncode == 0, proc.stderr
    for target in (out, out / "results.json", out / "results.csv"):
        shown = run_cli("show", str(target))
        assert shown.returncode == 0, shown.stderr
        assert "winners" in shown.stdout
        assert "layer_name" in shown.stdout and "low_rank" in shown.stdout
        if target.suffix != ".csv":
            assert "applied configuration" in shown.stdout and "seed=" in shown.stdout
    png = tmp_path / "trials.png"
    plotted = run_cli("plot", str(out / "results.json"), "--output", str(png))
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_show_a_missing_results_file_is_a_clean_error(tmp_path, capsys):
    code = main(["show", str(tmp_path / "nope.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "Traceback" not in err


def test_show_refuses_a_pickle(tmp_path, capsys):
    bad = tmp_path / "results.pkl"
    bad.write_bytes(b"\x80\x04K\x01.")
    assert main(["show", str(bad)]) == 2
    assert "pickle" in capsys.readouterr().err


# ---- plugins -----------------------------------------------------------------------------
def test_plugins_lists_builtins_with_versions_and_contributions():
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    for name in ("optuna", "grid", "throughput", "Linear", "Conv2d"):
        assert name in proc.stdout
    assert "built-in" in proc.stdout
    report = json.loads(run_cli("plugins", "--json").stdout)
    assert report["broken"] == [] and report["conflicts"] == []
    listed = report["plugins"]
    names = {p["name"] for p in listed}
    assert "panther.tuner.search.optuna" in names
    optuna = next(p for p in listed if p["name"] == "panther.tuner.search.optuna")
    assert "tpe" in optuna["contributes"]["optuna_samplers"]
    assert all(p["version"] for p in listed if p["builtin"])


# ---- config errors -----------------------------------------------------------------------
GOOD = {
    "model": '"tiny_model:build_model"',
    "model_kwargs": "{ hidden = 16, epochs = 1 }",
    "accuracy": '"tiny_model:accuracy"',
}


def _config(extra_top: str = "", layers: str | None = None, search: str = "") -> str:
    top = "\n".join(f"{k} = {v}" for k, v in GOOD.items())
    if layers is None:
        layers = '[[layers]]\nselector = { type = "Linear" }\nparams = { low_rank = [4, 8] }\n'
    return f"{top}\n{extra_top}\n{layers}\n{search}\n"


ERROR_CASES = [
    # (id, config text, key expected in the message, words expected in the message)
    ("unknown-top-key", _config("treshold = 0.9"), "treshold", ["did you mean 'threshold'"]),
    ("unknown-layer-key",
     _config(layers='[[layers]]\nselector = { type = "Linear" }\nseperate = true\n'),
     "layers[0].seperate", ["did you mean 'separate'"]),
    ("selector-matches-nothing",
     _config(layers='[[layers]]\nselector = "encoder.fc9"\n'), "layers[0].selector", ["encoder.fc9"]),
    ("selector-unknown-type",
     _config(layers='[[layers]]\nselector = { type = "Lineer" }\n'), "layers[0].selector", ["Lineer"]),
    ("selector-unknown-key",
     _config(layers='[[layers]]\nselector = { typ = "Linear" }\n'), "layers[0].selector.typ", ["type"]),
    ("factory-module-missing",
     _config().replace("tiny_model:build_model", "no_such_module:build"), "model",
     ["no_such_module", "import"]),
    ("factory-attribute-missing",
     _config().replace("tiny_model:build_model", "tiny_model:build_modle"), "model",
     ["did you mean 'build_model'"]),
    ("factory-not-a-reference",
     _config().replace("tiny_model:build_model", "tiny_model.build_model"), "model", ["colon"]),
    ("factory-raises", _config().replace("hidden = 16", "hiden = 16"), "model",
     ["hiden", "model_kwargs"]),
    ("missing-required-key", _config().replace('accuracy = "tiny_model:accuracy"', ""), "accuracy",
     ["missing"]),
    ("unknown-param-of-layer-type",
     _config(layers='[[layers]]\nselector = { type = "Linear" }\nparams = { lowrank = [4] }\n'),
     "layers[0].params.lowrank", ["did you mean 'low_rank'"]),
    ("bad-param-space-type",
     _config(layers='[[layers]]\nselector = "0"\nparams = { low_rank = { type = "integer", low = 1, high = 4 } }\n'),
     "layers[0].params.low_rank.type", ["int"]),
    ("bad-int-bounds",
     _config(layers='[[layers]]\nselector = "0"\nparams = { low_rank = { type = "int", low = 9, high = 4 } }\n'),
     "layers[0].params.low_rank", ["low <= high"]),
    ("param-value-does-not-fit",
     _config(layers='[[layers]]\nselector = "0"\nparams = { low_rank = [4, 0] }\n'),
     "layers[0].params", ["low_rank", ">= 1"]),
    ("layer-in-two-tables",
     _config(layers='[[layers]]\nselector = "0"\n[[layers]]\nselector = { type = "Linear" }\n'),
     "layers", ["selected by configs #0 and #1"]),
    ("unsketchable-layer",
     _config(layers='[[layers]]\nselector = "1"\n'), "layers[0].selector", ["ReLU"]),
    ("unknown-backend", _config(search='[search]\nbackend = "optunaa"\n'), "search.backend",
     ["did you mean 'optuna'"]),
    ("unknown-sampler", _config(search='[search]\nsampler = "tpee"\n'), "search.sampler", ["tpe"]),
    ("unknown-search-key", _config(search='[search]\ntrials = 5\n'), "search.trials", ["n_trials"]),
    ("grid-takes-no-trials", _config(search='[search]\nbackend = "grid"\nn_trials = 5\n'),
     "search.n_trials", ["takes no options"]),
    ("unknown-backend-option", _config(search='[search]\nbackend = "skopt"\noptions = { estimatr = "GP" }\n'),
     "search.options.estimatr", ["estimator"]),
    ("backend-rejects-option", _config(search='[search]\nbackend = "grid"\nsampler = "tpe"\n'),
     "search.sampler", ["grid"]),
    ("unknown-evaluator", _config('speed = { evaluator = "thruput" }'), "speed.evaluator",
     ["did you mean 'throughput'"]),
    ("unknown-evaluator-option", _config('speed = { evaluator = "throughput", shape = [1, 32] }'),
     "speed.shape", ["input_shape"]),
    ("lower-is-better-speed", _config('speed = { evaluator = "flops", input_shape = [1, 32] }'),
     "speed", ["lower-is-better", "inverse = true"]),
    ("threshold-without-speed", _config("threshold = 0.9"), "speed", ["threshold"]),
    ("bad-threshold-kind", _config('speed = { evaluator = "flops", inverse = true }\nthreshold = { dorp = 0.1 }'),
     "threshold.dorp", ["did you mean 'drop'"]),
    ("threshold-nan", _config('speed = { evaluator = "flops", inverse = true }\nthreshold = nan'),
     "threshold", ["nan", "finite"]),
    ("threshold-inf", _config('speed = { evaluator = "flops", inverse = true }\nthreshold = inf'),
     "threshold", ["inf", "finite"]),
    ("threshold-drop-inf",
     _config('speed = { evaluator = "flops", inverse = true }\nthreshold = { drop = inf }'),
     "threshold.drop", ["inf"]),
    ("wrong-value-type", _config(search="[search]\nn_trials = \"ten\"\n"), "search.n_trials", ["integer"]),
    ("toml-syntax", "model = \n", "", ["TOML"]),
]


@pytest.mark.parametrize("text, key, words", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_config_errors_name_file_key_and_fix(tmp_path, monkeypatch, capsys, text, key, words):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    config = write_config(tmp_path, text, name="bad.toml")
    with pytest.raises(ConfigError) as info:
        load_tune_config(config)
    assert info.value.key == key
    code = main(["tune", str(config), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.toml" in err
    if key:
        assert f"key '{key}'" in err
    assert "fix:" in err
    for word in words:
        assert word in err, err
    assert "Traceback" not in err
    assert err.count("panther-tune:") == 1  # one message, not a cascade
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert "absent.toml" in err and "does not exist" in err and "Traceback" not in err


def test_config_error_in_subprocess_and_debug_traceback(tmp_path):
    config = write_config(tmp_path, _config("treshold = 0.9"), name="typo.toml")
    plain = run_cli("tune", str(config))
    assert plain.returncode == 2
    assert "typo.toml" in plain.stderr and "treshold" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = run_cli("tune", str(config), "--debug")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "treshold" in debug.stderr


def test_factory_module_next_to_the_config_is_importable(tmp_path):
    """The config's folder is on the import path, so a factory can sit beside it."""
    (tmp_path / "my_factory.py").write_text(textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64))
        def accuracy(model):
            return 1.0
    """))
    config = write_config(tmp_path, """
        model = "my_factory:build"
        accuracy = "my_factory:accuracy"
        [[layers]]
        selector = { type = "Linear", indices = [-1] }
        params = "auto"
    """)
    spec = load_tune_config(config)
    assert spec.configs[0].params == "auto"
    assert spec.threshold is None and spec.speed_fn is None


def test_config_folder_is_on_the_import_path_only_while_importing_its_modules(tmp_path):
    """A ``pandas.py`` next to a config that never names it is never executed (issue 15 item 9).

    The factory module still imports its own sibling; afterwards the folder is off
    ``sys.path``, so the CLI's later ``import pandas`` finds the installed package. Run in
    a subprocess: this test process may have imported pandas already.
    """
    marker = tmp_path / "shadow-ran"
    (tmp_path / "pandas.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "sibling_helper.py").write_text("WIDTH = 8\n")
    (tmp_path / "shadow_factory.py").write_text(textwrap.dedent("""
        from torch import nn
        import sibling_helper
        def build():
            return nn.Sequential(nn.Linear(sibling_helper.WIDTH, 64), nn.ReLU(), nn.Linear(64, 64))
        def accuracy(model):
            return 1.0
    """))
    config = write_config(tmp_path, """
        model = "shadow_factory:build"
        accuracy = "shadow_factory:accuracy"
        [[layers]]
        selector = "2"
        params = { low_rank = [2] }
    """)
    script = textwrap.dedent(f"""
        import sys
        from panther.cli import load_tune_config
        spec = load_tune_config({str(config)!r})
        assert spec.model[0].in_features == 8
        assert {str(tmp_path)!r} not in sys.path, sys.path
        import pandas
        print(pandas.__file__)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert str(tmp_path) not in proc.stdout


def test_evaluator_options_call_and_reference_model(tmp_path, monkeypatch):
    """``{call = ...}`` options are built by calling the function; agreement gets the original."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    config = write_config(tmp_path, """
        model = "tiny_model:build_model"
        model_kwargs = { hidden = 16, epochs = 1 }
        accuracy = { evaluator = "agreement", inputs = { call = "tiny_model:example_batch" } }
        speed = { evaluator = "throughput", example_input = { call = "tiny_model:example_batch" }, iters = 1, repeats = 1, warmup = 0 }
        threshold = 0.9
        [[layers]]
        selector = ["0", "2"]
        params = { low_rank = [2, 4] }
        separate = false
        [search]
        backend = "random"
        n_trials = 2
    """)
    spec = load_tune_config(config)
    assert spec.accuracy_fn(spec.model) == pytest.approx(1.0)  # the original agrees with itself
    assert spec.speed_fn(spec.model) > 0
    assert spec.threshold == AccuracyConstraint("absolute", 0.9)
    assert spec.configs[0].separate is False


@pytest.mark.parametrize("backend", ["grid", "random"])
def test_tune_in_process_with_other_backends(tmp_path, monkeypatch, capsys, backend):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    text = TINY_CONFIG.format(backend=backend)
    if backend == "grid":  # the grid is enumerated whole; it has no trial budget
        text = text.replace("n_trials = 3\nseed = 0\n", "")
    config = write_config(tmp_path, text)
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "stale.png").write_bytes(b"\x89PNG old run")
    code = main(["tune", str(config), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["backend"] == backend
    assert summary["after"]["accuracy"] >= summary["threshold"] - 1e-9
    # A reused output folder holds this run's plots only, and the summary lists them.
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert "stale.png" not in pngs and "trials.png" in pngs
    assert {Path(f).name for f in summary["files"].values()} >= pngs


# ---- demo --------------------------------------------------------------------------------
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--output", str(out), "--seed", "1", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and summary["seed"] == 1
    before, after = summary["before"], summary["after"]
    assert after["accuracy"] >= summary["threshold"] - 1e-9
    assert after["flops"] < before["flops"]  # a sketch was applied: the model does less work
    assert after["params"] < before["params"]
    assert {r["layer"] for r in summary["layers"]} & {"fc1", "fc2"}
    assert before["speed"] > 0 and after["speed"] > 0
    for name in ("results.json", "results.csv", "tuned_model.pt"):
        assert (out / name).is_file()
    assert list((out / "plots").glob("*.png"))
    assert "samples/s" in proc.stdout and str(out.resolve()) in proc.stdout


# ---- the demo's building blocks ----------------------------------------------------------
def test_digits_split_is_reproducible_and_disjoint():
    from panther.demo import load_digits_data

    a, b = load_digits_data(seed=3), load_digits_data(seed=3)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_train) + len(a.x_val) == 1797
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert not torch.equal(load_digits_data(seed=4).y_val, a.y_val)
    with pytest.raises(ValueError, match="val_fraction"):
        load_digits_data(val_fraction=1.0)


def test_training_is_deterministic_for_a_seed():
    from panther.demo import DigitsNet, accuracy, load_digits_data, train_model

    data = load_digits_data(seed=0)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = train_model(DigitsNet(width=32, channels=4), data, epochs=1, seed=0)
        assert not model.training
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert 0.0 <= accuracy(model, data.x_val, data.y_val) <= 1.0
    with pytest.raises(ValueError, match="width"):
        DigitsNet(width=0)


def test_flop_count_prices_sketched_layers_like_dense_ones():
    from panther.demo import count_flops
    from panther.nn import SKLinear

    dense = torch.nn.Linear(256, 128)
    x = torch.randn(3, 256)
    assert count_flops(dense, x) == 2 * 3 * 256 * 128
    sketched = SKLinear.from_linear(dense, num_terms=1, low_rank=8, seed=0)
    # two products of width 2*L*k = 16 per row, as the cost model in the docs says
    assert count_flops(sketched, x) == 2 * 3 * 2 * 8 * (256 + 128)


def test_interleaved_throughput_reports_every_model():
    from panther.demo import compare_throughput, measure_throughput

    models = {"a": torch.nn.Linear(16, 16), "b": torch.nn.Linear(16, 4)}
    speeds = compare_throughput(models, torch.randn(8, 16), iterations=2, repeats=2, warmup=0)
    assert set(speeds) == {"a", "b"} and all(v > 0 for v in speeds.values())
    assert measure_throughput(models["a"], torch.randn(8, 16), iterations=1, repeats=1, warmup=0) > 0


def test_demo_rejects_bad_options(capsys):
    assert main(["demo", "--trials", "0", "--quick"]) == 2
    assert "--trials" in capsys.readouterr().err
    assert main(["demo", "--tolerance", "1.5", "--quick"]) == 2
    assert "--tolerance" in capsys.readouterr().err


def test_tune_resumes_from_storage(tmp_path, monkeypatch, capsys):
    """[search] storage/study_name/load_if_exists reach Optuna: a re-run continues each layer.

    ``n_trials`` counts evaluations; repeated suggestions are answered from the cache and do
    not use it up, so the check is on evaluated trials, not on the study's trial count.
    """
    import optuna

    from panther.tuner import load_tuning_results

    monkeypatch.syspath_prepend(str(EXAMPLES))
    db = tmp_path / "tuning.db"
    base = TINY_CONFIG.format(backend="optuna")
    evaluated = {}
    for n_trials in (2, 3):
        text = base.replace("n_trials = 3", f"n_trials = {n_trials}") + (
            f'storage = "sqlite:///{db}"\nstudy_name = "cli-resume"\nload_if_exists = true\n'
        )
        config = write_config(tmp_path, text)
        out = tmp_path / f"out{n_trials}"
        assert main(["tune", str(config), "--output", str(out)]) == 0, capsys.readouterr().err
        df = load_tuning_results(out / "results.json").to_dataframe()
        ran = df[~df["status"].isin(["cached", "skipped"])]
        evaluated[n_trials] = {
            layer: sorted(map(int, part["low_rank"])) for layer, part in ran.groupby("layer_name")
        }
    assert {layer: len(ranks) for layer, ranks in evaluated[2].items()} == {"0": 2, "2": 2}
    # The second run kept the first run's evaluations and added one per layer.
    for layer, ranks in evaluated[3].items():
        assert len(ranks) == 3 and set(evaluated[2][layer]) <= set(ranks), (layer, ranks)
    studies = {s.study_name for s in optuna.study.get_all_study_summaries(storage=f"sqlite:///{db}")}
    assert studies == {"cli-resume/0", "cli-resume/2"}


# ---- parameter-space parsing (property tests) ---------------------------------------------


@settings(max_examples=25, deadline=None)
@given(low=st.integers(1, 64), span=st.integers(0, 64), step=st.integers(1, 9))
def test_int_space_tables_match_int_specs(low, span, step):
    from panther.cli.schema import parse_param_space as _parse_param_space
    from panther.tuner import Int

    path = Path("cfg.toml")
    space = _parse_param_space(path, "layers[0].params",
                               {"low_rank": {"type": "int", "low": low, "high": low + span, "step": step}})
    assert space["low_rank"] == Int(low, low + span, step=step)
    assert space["low_rank"].values() == list(range(low, low + span + 1, step))
    if span > 0:
        with pytest.raises(ConfigError) as info:
            _parse_param_space(path, "layers[0].params",
                               {"low_rank": {"type": "int", "low": low + span, "high": low - 1}})
        assert info.value.key == "layers[0].params.low_rank"


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.integers(1, 512), min_size=1, max_size=8, unique=True),
       extra=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
def test_list_spaces_keep_order_and_unknown_spec_keys_are_named(values, extra):
    from panther.cli.schema import PARAM_SPEC_KEYS
    from panther.cli.schema import parse_param_space as _parse_param_space

    path = Path("cfg.toml")
    space = _parse_param_space(path, "p", {"low_rank": values})
    assert space["low_rank"].values() == values
    if extra not in PARAM_SPEC_KEYS["float"]:
        with pytest.raises(ConfigError) as info:
            _parse_param_space(path, "p", {"x": {"type": "float", "low": 0.0, "high": 1.0, extra: 1}})
        assert info.value.key == f"p.x.{extra}"


def test_ctrl_c_during_tune_still_writes_results(tmp_path, monkeypatch, capsys):
    """An interrupt keeps the trials so far: outputs are written, exit status is 130."""
    (tmp_path / "ctrl_c_model.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        calls = 0

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64)).eval()

        def accuracy(model):
            global calls
            calls += 1
            if calls == 4:  # the baseline and two trials pass, then the user hits Ctrl-C
                raise KeyboardInterrupt
            return 1.0
    """))
    config = write_config(tmp_path, """
        model = "ctrl_c_model:build"
        accuracy = "ctrl_c_model:accuracy"
        [[layers]]
        selector = "2"
        params = { low_rank = [2, 4, 8, 16] }
        [search]
        backend = "grid"
    """)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="not verified"):
        code = main(["tune", str(config), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    from panther.tuner import load_tuning_results

    trials = load_tuning_results(out / "results.json").trials
    assert 1 <= len(trials) < 4


def test_trial_plot_handles_rejected_only_and_empty_runs(tmp_path):
    """A search whose every trial was rejected, and a run with no trials, still plot."""
    import pandas as pd

    from panther.tuner.visualizer import save_trial_plot as _plot_trials

    inf = float("inf")
    df = pd.DataFrame({
        "layer_name": ["a", "a", "a", "b", "b"],
        "score": [-inf, 2.0, -inf, -inf, -inf],
        "accuracy": [0.5, 0.95, 0.4, 0.1, None],
    })
    for frame, name in ((df, "mixed.png"), (df.iloc[:0], "empty.png")):
        path = _plot_trials(frame, tmp_path / name, title="t", threshold=0.9)
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_show_hides_cached_repeats(tmp_path, capsys):
    """Repeated proposals answered from the cache are counted, not listed."""
    csv = tmp_path / "results.csv"
    csv.write_text(
        "layer_name,low_rank,score,accuracy,status\n"
        "fc,4,2.0,0.9,ok\n"
        "fc,4,2.0,0.9,cached\n"
        "fc,99,-inf,,skipped\n"
    )
    assert main(["show", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "3 trial(s) (1 repeated proposal(s)" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("fc")]
    statuses = [row[-1] for row in rows]
    assert "cached" not in statuses and "skipped" in statuses


# ---- outputs checked before tuning, rescued at the end (issue 15 items 2 and 10) ----------
def _tiny_run(folder: Path, accuracy_body: str = "    return 1.0", threshold: str = "") -> Path:
    """A config tuning one Linear(64, 64) over two ranks (grid), with the given accuracy body.

    The accuracy function gets the model as ``model`` and may use ``folder`` (this test's
    folder) and ``is_sketched(model)``.
    """
    # One module name per test: an in-process run imports it, and a second test must not
    # get the first one's module back from sys.modules.
    module = "run_model_" + re.sub(r"\W", "_", folder.name)
    (folder / f"{module}.py").write_text(textwrap.dedent("""
        import pathlib
        import torch
        from torch import nn

        folder = pathlib.Path({folder!r})

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64)).eval()

        def is_sketched(model):
            return any(type(m).__name__.startswith("SK") for m in model.modules())

        def accuracy(model):
        {body}
    """).format(folder=str(folder), body=accuracy_body.strip("\n")))
    speed = 'speed = { evaluator = "flops", input_shape = [1, 16], inverse = true }\n' if threshold else ""
    return write_config(folder, f"""
        model = "{module}:build"
        accuracy = "{module}:accuracy"
        {speed}{threshold}
        [[layers]]
        selector = "2"
        params = {{ low_rank = [2, 4] }}
        [search]
        backend = "grid"
    """.replace("\n        ", "\n"))


@pytest.mark.parametrize("kind", ["a file", "inside a file"])
def test_unusable_output_is_refused_before_tuning(tmp_path, capsys, kind):
    marker = tmp_path / "evaluated"
    config = _tiny_run(tmp_path, f"    open({str(marker)!r}, 'w').close()\n    return 1.0")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    output = blocker if kind == "a file" else blocker / "out"
    code = main(["tune", str(config), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(output) in err and "--output" in err and "Traceback" not in err
    assert not marker.exists()  # refused before the first evaluation
    assert blocker.read_text() == "not a folder"


def test_output_lost_during_the_run_is_saved_to_a_named_rescue_folder(tmp_path, monkeypatch, capsys):
    """The output folder turns into a file mid-run: the results go to a rescue folder the message names."""
    out = tmp_path / "out"
    body = f"""
    out = pathlib.Path({str(out)!r})
    if out.is_dir():  # the user's folder disappears (and a file takes its name) mid-run
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
        out.write_text("in the way")
    return 1.0
"""
    config = _tiny_run(tmp_path, body)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    code = main(["tune", str(config), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    rescued = list(work.glob("panther-tune-rescue-*"))
    assert len(rescued) == 1
    assert str(rescued[0].resolve()) in captured.err and str(out) in captured.err
    from panther.tuner import load_tuning_results

    assert load_tuning_results(rescued[0] / "results.json").trials
    assert (rescued[0] / "summary.json").is_file()


def test_report_says_when_every_trial_crashed(tmp_path, capsys):
    body = """
    if is_sketched(model):
        raise RuntimeError("evaluation crashed")
    return 1.0
"""
    config = _tiny_run(tmp_path, body)
    assert main(["tune", str(config), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "every trial failed (2 of 2)" in out
    assert "met the threshold" not in out
    shown = main(["show", str(tmp_path / "out")])
    assert shown == 0
    assert "every trial failed" in capsys.readouterr().out


def test_report_counts_rejections_when_no_configuration_met_the_threshold(tmp_path, capsys):
    body = """
    return 0.5 if is_sketched(model) else 1.0
"""
    config = _tiny_run(tmp_path, body, threshold="threshold = { drop = 0.1 }")
    assert main(["tune", str(config), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "no configuration met the threshold (2 rejected)" in out


def test_no_plots_and_threads(tmp_path, capsys):
    config = _tiny_run(tmp_path)
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "trials.png").write_bytes(b"\x89PNG old run")
    assert main(["tune", str(config), "--output", str(out), "--no-plots", "--threads", "1"]) == 0, \
        capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["torch_threads"] == 1
    assert "trials_plot" not in summary["files"]
    assert not list((out / "plots").glob("*.png"))  # the stale plot is gone, no new one drawn
    assert main(["tune", str(config), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_show_names_a_csv_without_the_trial_columns(tmp_path, capsys):
    csv = tmp_path / "other.csv"
    csv.write_text("a,b\n1,2\n")
    assert main(["show", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "other.csv" in err and "layer_name" in err and "score" in err and "Traceback" not in err
    assert main(["plot", str(csv)]) == 2
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["show", str(empty)]) == 2
    assert "empty.csv" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"before": {}, "after": 3}', "\xff\xfe"])
def test_show_names_a_corrupt_summary(tuned_run, tmp_path, capsys, text):
    out, proc = tuned_run
    assert proc.returncode == 0, proc.stderr
    copy_dir = tmp_path / "run"
    copy_dir.mkdir()
    (copy_dir / "results.json").write_bytes((out / "results.json").read_bytes())
    (copy_dir / "summary.json").write_bytes(text.encode("latin-1"))
    assert main(["show", str(copy_dir)]) == 2
    err = capsys.readouterr().err
    assert str(copy_dir / "summary.json") in err and "Traceback" not in err


# ---- the report asks each layer type what to show ---------------------------------------------
def test_report_shows_what_each_layer_type_describes(capsys):
    """A plugin's layer type appears in the report with its own settings, no CLI edits needed."""
    from torch import nn

    from panther.cli.report import layer_choices, print_report
    from panther.tuner import plugins
    from panther.tuner.layers.base import Cost, LayerType

    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8, 8))

    class Narrow(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.width, self.seed = width, 5
            self.weight = nn.Parameter(torch.zeros(8, width))

    class NarrowType(LayerType):
        name = "Narrowing"
        module_types = (Wide,)
        sketched_type = Narrow
        param_names = ("width",)

        def build(self, original, params, copy_weights=True):
            return Narrow(params["width"])

        def auto_space(self, original):
            return {}

        def cost(self, original, params=None):
            return Cost(1, 1)

    class Plugin:
        @staticmethod
        @plugins.hookspecs.hookimpl
        def panther_layer_types():
            return [NarrowType()]

    name = plugins.register_plugin(Plugin(), name="narrowing-for-report")
    try:
        original = nn.Sequential(Wide(), nn.Linear(16, 64))
        from panther.nn import SKLinear

        tuned = nn.Sequential(Narrow(2), SKLinear.from_linear(original[1], 1, 4, seed=3))
        rows = layer_choices(original, tuned)
    finally:
        plugins.unregister_plugin(name)
    assert rows[0]["width"] == 2 and rows[0]["seed"] == 5
    assert rows[1]["low_rank"] == 4 and rows[1]["num_terms"] == 1 and rows[1]["seed"] == 3
    print_report({"before": {"params": 1000}, "after": {"params": 100}, "layers": rows})
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("layer"))
    assert header.split()[:6] == ["layer", "original", "sketched", "width", "num_terms", "low_rank"]
    assert "Narrow" in table and "seed" not in header
