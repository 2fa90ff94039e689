"""The plugin host: hook contract, registries, discovery, conflicts, failure isolation."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from panther.tuner import hookspecs, plugins
from panther.tuner.config import Categorical, LayerConfig, TuningConfigs
from panther.tuner.hookspecs import hookimpl
from panther.tuner.layers import LinearLayerType
from panther.tuner.plugins import PluginConflictError, PluginWarning
from panther.tuner.search import (
    GridSearch,
    OptunaSearch,
    RandomSearch,
    SearchAlgorithm,
    SkoptSearch,
)

REPO = Path(__file__).resolve().parents[1]
BUILTINS = {
    "panther.tuner.search.optuna",
    "panther.tuner.search.skopt",
    "panther.tuner.search.grid",
    "panther.tuner.search.random",
    "panther.tuner.layers.linear",
    "panther.tuner.layers.conv2d",
    "panther.tuner.layers.attention",
}


@pytest.fixture(autouse=True)
def fresh_manager():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def make_distribution(
    root: Path, dist: str, version: str, entry_points: dict, modules: dict
) -> Path:
    """Write an installed-looking distribution (dist-info + modules) under ``root``."""
    root.mkdir(exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[panther]\n{lines}")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    return root


# --------------------------------------------------------------------------- contract


def test_hook_contract_is_documented_and_builtins_conform():
    specs = [n for n in dir(hookspecs) if n.startswith("panther_")]
    assert set(specs) == {
        "panther_search_algorithms",
        "panther_optuna_samplers",
        "panther_layer_types",
        "panther_evaluators",
        "panther_trial_finished",
        "panther_layer_finished",
        "panther_tuning_finished",
    }
    assert all(inspect.getdoc(getattr(hookspecs, n)) for n in specs)
    pm = plugins.get_plugin_manager()
    assert pm.project_name == "panther"
    pm.check_pending()  # every hookimpl of every registered plugin matches a spec
    names = {n for n, _ in pm.list_name_plugin()}
    assert BUILTINS <= names


def test_builtin_registries():
    algos = plugins.search_algorithms()
    assert algos["optuna"] is OptunaSearch and algos["skopt"] is SkoptSearch
    assert algos["grid"] is GridSearch and algos["random"] is RandomSearch
    assert set(plugins.optuna_samplers()) >= {
        "tpe",
        "cmaes",
        "random",
        "grid",
        "qmc",
        "nsga2",
        "gp",
        "bruteforce",
    }
    assert isinstance(plugins.make_sampler("tpe", seed=1), optuna.samplers.TPESampler)
    assert isinstance(plugins.make_sampler("NSGA2", seed=1), optuna.samplers.NSGAIISampler)
    assert [t.name for t in plugins.layer_types()][:3] == ["Linear", "Conv2d", "MultiheadAttention"]
    assert plugins.get_layer_type("linear").name == "Linear"  # case-insensitive
    search = plugins.get_search_algorithm("Random", n_trials=3, seed=0)
    assert isinstance(search, RandomSearch) and search.n_trials == 3
    with pytest.raises(ValueError, match=r"unknown search algorithm 'anneal'.*'grid'"):
        plugins.get_search_algorithm("anneal")
    with pytest.raises(ValueError, match="unknown layer type 'LSTM'"):
        plugins.get_layer_type("LSTM")
    with pytest.raises(ValueError, match="unknown panther hook"):
        plugins.emit("panther_no_such_hook")


def test_list_plugins_reports_builtins():
    infos = {i.name: i for i in plugins.list_plugins()}
    for name in BUILTINS:
        info = infos[name]
        assert info.builtin and info.distribution == "panther-rnla" and info.version
    assert infos["panther.tuner.search.optuna"].contributes["search_algorithms"] == ["optuna"]
    assert "tpe" in infos["panther.tuner.search.optuna"].contributes["optuna_samplers"]
    assert infos["panther.tuner.layers.conv2d"].contributes == {"layer_types": ["Conv2d"]}


# --------------------------------------------------------------------------- discovery


def test_example_plugins_are_discovered_through_entry_points():
    infos = {i.name: i for i in plugins.list_plugins()}
    halving, conv1d = infos["halving"], infos["conv1d"]
    assert not halving.builtin and halving.distribution == "panther-halving"
    assert halving.version == "0.1.0"
    assert halving.contributes == {"search_algorithms": ["halving"]}
    assert conv1d.distribution == "panther-conv1d" and conv1d.contributes == {
        "layer_types": ["Conv1d"]
    }
    from panther_halving import HalvingSearch

    assert isinstance(plugins.get_search_algorithm("halving", seed=0), HalvingSearch)
    assert plugins.layer_type_for(nn.Conv1d(2, 4, 3)).name == "Conv1d"


def test_example_plugins_in_a_tuning_run():
    from panther_conv1d import SKConv1d

    from panther.tuner import SKAutoTuner

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(64, 4),
    ).eval()
    x = torch.randn(8, 32, 24)
    reference = model(x).detach()

    def similarity(m: nn.Module) -> float:
        with torch.no_grad():
            return float(1 - (m(x) - reference).norm() / reference.norm())

    tuner = SKAutoTuner(
        model,
        TuningConfigs([LayerConfig(layer_names={"type": "Conv1d"}, params="auto")]),
        similarity,
        search_algorithm=plugins.get_search_algorithm("halving", n_trials=6, seed=0),
    )
    results = tuner.tune()
    assert set(results) == {"0"}
    df = tuner.get_results_dataframe()
    # n_trials counts evaluations: skipped (costlier) proposals are free, so the search
    # makes more than n_trials=6 proposals (it ends once its narrowed product is done).
    assert (df["status"] == "skipped").any() and len(df) > 6
    assert (~df["status"].isin(["skipped", "cached"])).sum() <= 6
    best = results["0"]["params"]
    assert best["num_terms"] in (1, 2, 3) and best["low_rank"] in (4, 8, 16, 32)
    tuned = tuner.apply_best_params()
    assert isinstance(tuned[0], SKConv1d)
    assert tuned(x).shape == reference.shape


def test_autoload_switch_in_subprocess():
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from panther.tuner import plugins;"
        "print(json.dumps([[i.name, i.builtin] for i in plugins.list_plugins()]))"
    )
    env = {**os.environ, "PANTHER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "halving" not in listed and "conv1d" not in listed
    assert BUILTINS <= set(listed) and all(listed[n] for n in BUILTINS)


def test_autoload_switch_in_process(monkeypatch):
    monkeypatch.setenv("PANTHER_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset_plugin_manager()
    assert "halving" not in plugins.search_algorithms()
    # Hand registration still works with discovery off.
    import panther_halving.plugin

    plugins.register_plugin(panther_halving.plugin, name="halving-by-hand")
    assert "halving" in plugins.search_algorithms()


# --------------------------------------------------------------------------- registration


class _Annealing(SearchAlgorithm):
    """A stand-in search class for registration tests."""

    def initialize(self, param_space):
        self.param_space = param_space

    def get_next_params(self):
        return None

    def is_finished(self):
        return True


class _AlgoPlugin:
    def __init__(self, names):
        self.names = names

    @hookimpl
    def panther_search_algorithms(self):
        return {n: _Annealing for n in self.names}


def test_register_and_unregister_invalidate_the_cache():
    assert "anneal" not in plugins.search_algorithms()
    name = plugins.register_plugin(_AlgoPlugin(["anneal"]), name="anneal-plugin")
    assert name == "anneal-plugin"
    assert plugins.search_algorithms()["anneal"] is _Annealing
    info = {i.name: i for i in plugins.list_plugins()}["anneal-plugin"]
    assert not info.builtin and info.contributes == {"search_algorithms": ["anneal"]}
    with pytest.raises(ValueError, match="already registered"):
        plugins.register_plugin(_AlgoPlugin(["other"]), name="anneal-plugin")
    plugins.unregister_plugin("anneal-plugin")
    assert "anneal" not in plugins.search_algorithms()
    with pytest.raises(KeyError, match="no plugin named 'anneal-plugin'"):
        plugins.unregister_plugin("anneal-plugin")


def test_plugin_with_bad_hook_signature_is_rejected():
    class Bad:
        @hookimpl
        def panther_layer_finished(self, layer_name, colour):
            pass

    with pytest.raises(ValueError, match="hook specs"):
        plugins.register_plugin(Bad(), name="bad")
    assert "optuna" in plugins.search_algorithms()


# --------------------------------------------------------------------------- conflicts


def test_hand_registered_plugin_overrides_builtin_with_warning():
    with pytest.warns(
        PluginWarning, match=r"'grid'.*override-plugin.*overrides.*panther\.tuner\.search\.grid"
    ):
        algos = plugins.register_plugin(_AlgoPlugin(["grid"]), name="override-plugin") and (
            plugins.search_algorithms()
        )
    assert algos["grid"] is _Annealing
    plugins.unregister_plugin("override-plugin")
    assert plugins.search_algorithms()["grid"] is GridSearch


def test_same_rank_conflict_names_both_plugins():
    plugins.register_plugin(_AlgoPlugin(["twin"]), name="first-twin")
    plugins.register_plugin(_AlgoPlugin(["TWIN"]), name="second-twin")
    with pytest.raises(PluginConflictError, match=r"'TWIN'.*first-twin.*second-twin"):
        plugins.search_algorithms()
    plugins.unregister_plugin("second-twin")
    assert plugins.search_algorithms()["twin"] is _Annealing


def test_installed_plugin_cannot_silently_replace_a_builtin(tmp_path, monkeypatch):
    source = (
        "from panther.tuner.hookspecs import hookimpl\n"
        "import optuna\n"
        "@hookimpl\n"
        "def panther_optuna_samplers():\n"
        "    return {'tpe': lambda seed=None, **kw: optuna.samplers.RandomSampler(seed=seed)}\n"
    )
    root = make_distribution(
        tmp_path / "site",
        "shadow-sampler",
        "2.0",
        {"shadow": "shadow_sampler_mod"},
        {"shadow_sampler_mod": source},
    )
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugin_manager()
    with pytest.raises(
        PluginConflictError,
        match=r"'tpe'.*panther\.tuner\.search\.optuna.*'shadow'.*'shadow-sampler' 2\.0",
    ):
        plugins.optuna_samplers()
    # The other registries are unaffected.
    assert "optuna" in plugins.search_algorithms()


def test_layer_type_precedence_for_one_module_type():
    class MyLinear(LinearLayerType):
        name = "MyLinear"

    class LayerPlugin:
        def __init__(self, layer_type):
            self.layer_type = layer_type

        @hookimpl
        def panther_layer_types(self):
            return [self.layer_type]

    plugins.register_plugin(LayerPlugin(MyLinear()), name="my-linear")
    assert plugins.layer_type_for(nn.Linear(2, 2)).name == "MyLinear"  # hand-registered wins
    assert plugins.get_layer_type("Linear").name == "Linear"  # the built-in stays reachable

    class OtherLinear(LinearLayerType):
        name = "OtherLinear"

    plugins.register_plugin(LayerPlugin(OtherLinear()), name="other-linear")
    with pytest.raises(
        PluginConflictError, match=r"Linear is handled by several.*MyLinear.*OtherLinear"
    ):
        plugins.layer_type_for(nn.Linear(2, 2))


# --------------------------------------------------------------------------- failure isolation


def test_broken_plugins_warn_and_the_host_keeps_working(tmp_path, monkeypatch):
    raising = (
        "from panther.tuner.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def panther_search_algorithms():\n"
        "    raise RuntimeError('database unreachable')\n"
        "@hookimpl\n"
        "def panther_layer_finished(layer_name, best_params, best_score):\n"
        "    raise RuntimeError('logger down')\n"
    )
    wrong_type = (
        "from panther.tuner.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def panther_search_algorithms():\n"
        "    return {'not-a-class': 42}\n"
    )
    root = make_distribution(
        tmp_path / "site",
        "flaky-plugins",
        "0.3",
        {
            "broken": "broken_import_mod",
            "missing": "no_such_module_anywhere",
            "raiser": "raising_hook_mod",
            "wrongtype": "wrong_type_mod",
        },
        {
            "broken_import_mod": "raise ImportError('needs libfoo')\n",
            "raising_hook_mod": raising,
            "wrong_type_mod": wrong_type,
        },
    )
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugin_manager()
    with pytest.warns(PluginWarning) as record:
        plugins.get_plugin_manager()
    messages = [str(w.message) for w in record]
    assert any(
        "'broken'" in m and "'flaky-plugins' 0.3" in m and "needs libfoo" in m for m in messages
    )
    assert any("'missing'" in m and "flaky-plugins" in m for m in messages)

    with pytest.warns(PluginWarning) as record:
        algos = plugins.search_algorithms()
    messages = [str(w.message) for w in record]
    assert any(
        "'raiser'" in m and "flaky-plugins" in m and "database unreachable" in m for m in messages
    )
    assert any("'wrongtype'" in m and "SearchAlgorithm subclass" in m for m in messages)
    assert {"optuna", "grid", "random", "skopt", "halving"} <= set(algos)
    assert "not-a-class" not in algos

    # A lifecycle hook that raises becomes a warning; the other plugins still run.
    calls = []

    class Recorder:
        @hookimpl
        def panther_layer_finished(self, layer_name, best_params, best_score):
            calls.append((layer_name, best_score))
            return "recorded"

    plugins.register_plugin(Recorder(), name="recorder")
    with pytest.warns(PluginWarning, match=r"'raiser'.*panther_layer_finished.*logger down"):
        results = plugins.emit(
            "panther_layer_finished", layer_name="fc1", best_params={}, best_score=0.5
        )
    assert calls == [("fc1", 0.5)] and results == ["recorded"]


def test_emit_passes_only_the_arguments_a_plugin_asks_for():
    seen = []

    class Partial:
        @hookimpl
        def panther_trial_finished(self, trial):
            seen.append(trial["score"])

    plugins.register_plugin(Partial(), name="partial")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        plugins.emit("panther_trial_finished", layer_name="fc", trial={"score": 1.5})
    assert seen == [1.5]


def test_search_plugins_can_add_optuna_samplers():
    class SamplerPlugin:
        @hookimpl
        def panther_optuna_samplers(self):
            return {"my-random": lambda seed=None, **kw: optuna.samplers.RandomSampler(seed=seed)}

    plugins.register_plugin(SamplerPlugin(), name="sampler-plugin")
    search = OptunaSearch(n_trials=3, sampler="my-random", seed=0)
    search.initialize({"a": Categorical([1, 2, 3])})
    assert isinstance(search.study.sampler, optuna.samplers.RandomSampler)
