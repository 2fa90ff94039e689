"""The plugin host: hook contract, registries, discovery, conflicts, failure isolation,
hook validation, plugin selection, and the public-API-only rule for example plugins."""

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
    plugins.configure()  # the environment's selection (the suite runs in strict mode)
    plugins.reset_plugin_manager()
    yield
    plugins.configure()
    plugins.reset_plugin_manager()


@pytest.fixture
def lenient(monkeypatch):
    """Warn about plugin problems instead of raising (the default outside the test suite)."""
    monkeypatch.setenv("PANTHER_STRICT_PLUGINS", "0")
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
    # Core only: the Optuna sampler registry belongs to the Optuna backend.
    assert set(specs) == {
        "panther_search_algorithms",
        "panther_layer_types",
        "panther_evaluators",
        "panther_trial_finished",
        "panther_layer_finished",
        "panther_tuning_finished",
    }
    assert all(inspect.getdoc(getattr(hookspecs, n)) for n in specs)
    from panther.tuner import PLUGIN_API

    assert PLUGIN_API == hookspecs.PLUGIN_API == 1
    pm = plugins.get_plugin_manager()
    assert pm.project_name == "panther"
    pm.check_pending()  # every hookimpl of every registered plugin matches a spec
    names = {n for n, _ in pm.list_name_plugin()}
    assert BUILTINS <= names
    # The Optuna backend added its own spec when it was registered.
    assert pm.hook.panther_optuna_samplers.spec.namespace.__name__ == (
        "panther.tuner.search.optuna_samplers"
    )


def test_host_is_small_and_calls_through_pluggy():
    source = (REPO / "panther/tuner/plugins.py").read_text()
    assert "_OPTIONAL_BUILTINS" not in source and "impl.argnames" not in source
    for hook in ("panther_trial_finished", "panther_layer_finished", "panther_tuning_finished"):
        assert hook not in source  # list_plugins reads the specs, not a hard-coded list


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
    assert plugins.get_layer_type("Linear").name == "Linear"
    with pytest.raises(ValueError, match=r"case-sensitive: did you mean 'Linear'"):
        plugins.get_layer_type("linear")  # layer-type names compare exactly, like class names
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

    # Strict (the test suite, --check): an error naming the plugin, hook and argument.
    with pytest.raises(plugins.PluginError, match=r"'bad'.*panther_layer_finished.*'colour'"):
        plugins.register_plugin(Bad(), name="bad")
    assert plugins.get_plugin_manager().get_plugin("bad") is None
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
    algos = plugins.search_algorithms()  # building the registry no longer raises
    assert "twin" in algos and algos["grid"] is GridSearch
    with pytest.raises(PluginConflictError, match=r"'twin'.*first-twin.*second-twin"):
        plugins.get_search_algorithm("TWIN")
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
        match=r"'tpe'.*panther\.tuner\.search\.optuna.*'shadow'.*'shadow-sampler' 2\.0"
        r".*PANTHER_DISABLE_PLUGINS=shadow",
    ):
        plugins.make_sampler("tpe")
    # Only that name is ambiguous: the other samplers and registries are unaffected.
    assert isinstance(plugins.make_sampler("random", seed=0), optuna.samplers.RandomSampler)
    assert "optuna" in plugins.search_algorithms()
    [conflict] = plugins.conflicts()
    assert conflict.name == "tpe" and conflict.plugins == ("panther.tuner.search.optuna", "shadow")


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


def test_broken_plugins_warn_and_the_host_keeps_working(tmp_path, monkeypatch, lenient):
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
    # Warnings point at the plugin's own code, not at panther's host.
    raiser = next(w for w in record if "database unreachable" in str(w.message))
    assert raiser.filename == str(root / "raising_hook_mod.py") and raiser.lineno == 2
    broken = {(p.plugin, p.stage) for p in plugins.problems()}
    assert {("broken", "load"), ("missing", "load"), ("raiser", "hook"), ("wrongtype", "hook")} <= broken
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


# --------------------------------------------------------------------------- hook validation


class _Misspelt:
    @hookimpl
    def panther_search_algorithm(self):  # the spec is panther_search_algorithms
        return {"evolution": _Annealing}


def test_misspelt_hook_warns_with_the_closest_spec_name(lenient):
    with pytest.warns(PluginWarning) as record:
        plugins.register_plugin(_Misspelt(), name="misspelt")
    [warning] = [w for w in record if "misspelt" in str(w.message)]
    message = str(warning.message)
    assert "'panther_search_algorithm'" in message and "not a panther hook" in message
    assert "did you mean 'panther_search_algorithms'" in message
    assert warning.filename == __file__  # the plugin's own file, not panther's host
    # The bad implementation is left out, so pluggy's own check passes.
    plugins.get_plugin_manager().check_pending()
    assert [p.stage for p in plugins.problems() if p.plugin == "misspelt"] == ["check"]


def test_misspelt_hook_is_an_error_in_strict_mode():
    with pytest.raises(plugins.PluginError, match=r"did you mean 'panther_search_algorithms'"):
        plugins.register_plugin(_Misspelt(), name="misspelt")
    with pytest.raises(plugins.PluginError, match="strict"):
        plugins.register_plugin(_Misspelt(), name="misspelt", strict=True)


def test_unknown_hook_argument_and_unmarked_function_warn(lenient):
    class Sloppy:
        @hookimpl
        def panther_trial_finished(self, layer, trial):  # spec: layer_name
            pass

        def panther_tuning_finished(self, results):  # forgot @hookimpl
            pass

    with pytest.warns(PluginWarning) as record:
        plugins.register_plugin(Sloppy(), name="sloppy")
    messages = " | ".join(str(w.message) for w in record)
    assert "asks for argument(s) ['layer']" in messages and "did you mean ['layer_name']" in messages
    assert "'panther_tuning_finished' that is not marked @hookimpl" in messages
    assert plugins.emit("panther_trial_finished", layer_name="fc", trial={}) == []


def test_misspelt_hook_through_an_entry_point(tmp_path, monkeypatch):
    source = (
        "from panther.tuner import hookimpl\n"
        "@hookimpl\n"
        "def panther_evaluator():\n"
        "    return {}\n"
    )
    root = make_distribution(tmp_path / "site", "typo-plugin", "1.0", {"typo": "typo_mod"},
                             {"typo_mod": source})
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugin_manager()
    with pytest.raises(plugins.PluginError, match=r"'typo'.*'typo-plugin'.*'panther_evaluators'"):
        plugins.get_plugin_manager()
    monkeypatch.setenv("PANTHER_STRICT_PLUGINS", "0")
    plugins.reset_plugin_manager()
    with pytest.warns(PluginWarning, match=r"'typo'.*did you mean 'panther_evaluators'") as record:
        plugins.get_plugin_manager()
    assert record[0].filename == str(root / "typo_mod.py")


def test_plugin_api_version_mismatch_warns(lenient):
    class Future:
        PANTHER_PLUGIN_API = 2

        @hookimpl
        def panther_search_algorithms(self):
            return {"future": _Annealing}

    with pytest.warns(PluginWarning, match=r"PANTHER_PLUGIN_API = 2.*provides plugin API 1"):
        plugins.register_plugin(Future(), name="future")
    assert "future" in plugins.search_algorithms()  # loaded anyway, with the warning
    with pytest.raises(plugins.PluginError, match="PANTHER_PLUGIN_API = 2"):
        plugins.register_plugin(Future(), name="future-strict", strict=True)

    class Current:
        PANTHER_PLUGIN_API = (1, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        plugins.register_plugin(Current(), name="current")


# --------------------------------------------------------------------------- pluggy semantics


def test_hook_wrappers_are_honoured():
    calls = []

    class Filter:
        @hookimpl(wrapper=True)
        def panther_search_algorithms(self):
            results = yield
            return [{k: v for k, v in r.items() if k != "skopt"} for r in results]

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def panther_trial_finished(self, layer_name):
            calls.append(("before", layer_name))
            yield
            calls.append(("after", layer_name))

    plugins.register_plugin(Filter(), name="filter")
    plugins.register_plugin(OldStyle(), name="old-style")
    algos = plugins.search_algorithms()
    assert "skopt" not in algos and algos["grid"] is GridSearch
    assert plugins.search_algorithms().plugin_of("grid") == "panther.tuner.search.grid"
    plugins.emit("panther_trial_finished", layer_name="fc", trial={})
    assert calls == [("before", "fc"), ("after", "fc")]


def test_a_raising_wrapper_is_reported_and_bypassed(lenient):
    class Crashing:
        @hookimpl(wrapper=True)
        def panther_search_algorithms(self):
            yield
            raise RuntimeError("wrapper bug")

    plugins.register_plugin(Crashing(), name="crashing")
    with pytest.warns(PluginWarning, match=r"'crashing'.*wrapper.*wrapper bug"):
        algos = plugins.search_algorithms()
    assert algos["grid"] is GridSearch


def test_class_plugins_are_instantiated(tmp_path, monkeypatch, lenient):
    source = (
        "from panther.tuner import hookimpl, SearchAlgorithm\n"
        "class Plugin:\n"
        "    @hookimpl\n"
        "    def panther_evaluators(self):\n"
        "        return {'constant': lambda value=1.0: (lambda model: value)}\n"
        "class NeedsArgs:\n"
        "    def __init__(self, url):\n"
        "        self.url = url\n"
    )
    root = make_distribution(tmp_path / "site", "class-plugins", "1.0",
                             {"cls": "cls_mod:Plugin", "needs": "cls_mod:NeedsArgs"},
                             {"cls_mod": source})
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugin_manager()
    with pytest.warns(PluginWarning, match=r"'needs'.*could not be instantiated without arguments"):
        plugins.get_plugin_manager()
    assert plugins.get_evaluator("constant", value=0.5)(nn.Linear(1, 1)) == 0.5
    with pytest.raises(plugins.PluginError, match="could not be instantiated"):
        from cls_mod import NeedsArgs

        plugins.register_plugin(NeedsArgs, name="by-hand")


# --------------------------------------------------------------------------- per-name conflicts


def _evolution_dists(tmp_path: Path) -> Path:
    source = (
        "from panther.tuner import SearchAlgorithm, hookimpl\n"
        "class Evolution{tag}(SearchAlgorithm):\n"
        "    def initialize(self, param_space):\n"
        "        self.param_space = param_space\n"
        "    def get_next_params(self):\n"
        "        return None\n"
        "    def is_finished(self):\n"
        "        return True\n"
        "@hookimpl\n"
        "def panther_search_algorithms():\n"
        "    return {{'evolution': Evolution{tag}}}\n"
    )
    root = make_distribution(tmp_path / "site", "evo-a", "1.0", {"evo-a": "evo_a"},
                             {"evo_a": source.format(tag="A")})
    return make_distribution(root, "evo-b", "2.0", {"evo-b": "evo_b"},
                             {"evo_b": source.format(tag="B")})


def test_one_clash_leaves_every_other_name_working(tmp_path, monkeypatch):
    from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs

    monkeypatch.syspath_prepend(str(_evolution_dists(tmp_path)))
    plugins.reset_plugin_manager()
    assert isinstance(plugins.get_search_algorithm("grid"), GridSearch)
    with pytest.raises(PluginConflictError) as info:
        plugins.get_search_algorithm("evolution")
    message = str(info.value)
    assert "'evo-a' (distribution 'evo-a' 1.0)" in message and "'evo-b'" in message
    assert "PANTHER_DISABLE_PLUGINS=evo-a" in message and "--no-plugin evo-b" in message
    # The default search (Optuna) still tunes.
    model = nn.Sequential(nn.Linear(16, 16))
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("0", {"low_rank": [2]})]),
                        lambda m: 1.0, max_trials=1)
    tuner.tune()
    # Disabling one of the two resolves the name.
    plugins.configure(disable=["evo-b"])
    assert type(plugins.get_search_algorithm("evolution")).__name__ == "EvolutionA"
    monkeypatch.setenv("PANTHER_DISABLE_PLUGINS", "evo-a")
    plugins.configure()
    assert type(plugins.get_search_algorithm("evolution")).__name__ == "EvolutionB"


def test_cli_reports_conflicts_and_exits_2(tmp_path, monkeypatch, capsys):
    from panther.cli import main

    monkeypatch.syspath_prepend(str(_evolution_dists(tmp_path)))
    plugins.reset_plugin_manager()
    assert main(["plugins", "--check"]) == 1
    out = capsys.readouterr().out
    assert "conflicts (1):" in out and "'evolution'" in out and "check: FAILED" in out
    assert main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in report["conflicts"]] == ["evolution"]
    assert report["broken"] == [] and any(p["name"] == "evo-a" for p in report["plugins"])
    assert main(["--no-plugin", "evo-b", "plugins", "--check"]) == 0
    capsys.readouterr()
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    config = tmp_path / "tune.toml"
    config.write_text(
        'model = "tiny_model:build_model"\nmodel_kwargs = { hidden = 16, epochs = 1 }\n'
        'accuracy = "tiny_model:accuracy"\n[[layers]]\nselector = { type = "Linear" }\n'
        'params = { low_rank = [4] }\n[search]\nbackend = "evolution"\n'
    )
    assert main(["tune", str(config), "--output", str(tmp_path / "out")]) == 2
    assert "claimed by" in capsys.readouterr().err


def test_broken_plugins_fail_the_check_in_their_own_section(tmp_path, monkeypatch, capsys):
    from panther.cli import main

    root = make_distribution(tmp_path / "site", "broken-dist", "0.1", {"broken": "broken_mod"},
                             {"broken_mod": "raise ImportError('needs libfoo')\n"})
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugin_manager()
    assert main(["plugins", "--check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [problem] = report["broken"]
    assert problem["plugin"] == "broken" and problem["stage"] == "load"
    assert "needs libfoo" in problem["message"] and problem["distribution"] == "broken-dist"
    assert main(["plugins"]) == 0
    assert "broken plugins (1):\n  broken [load]" in capsys.readouterr().out


# --------------------------------------------------------------------------- selection


def test_plugin_selection_by_name(monkeypatch):
    monkeypatch.setenv("PANTHER_PLUGINS", "halving")
    plugins.reset_plugin_manager()
    names = {n for n, _ in plugins.get_plugin_manager().list_name_plugin()}
    assert "halving" in names and "conv1d" not in names and BUILTINS <= names
    # Named plugins load even with autoload off, as pytest's -p does.
    monkeypatch.setenv("PANTHER_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset_plugin_manager()
    assert "halving" in plugins.search_algorithms()
    monkeypatch.delenv("PANTHER_PLUGINS")
    monkeypatch.delenv("PANTHER_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("PANTHER_DISABLE_PLUGINS", "panther-conv1d, halving")  # dist or ep name
    plugins.reset_plugin_manager()
    names = {n for n, _ in plugins.get_plugin_manager().list_name_plugin()}
    assert "halving" not in names and "conv1d" not in names
    with pytest.raises(ValueError, match=r"disabled plugins: \['panther-conv1d', 'halving'\]"):
        plugins.get_search_algorithm("halving")


def test_unknown_selected_name_is_reported(monkeypatch):
    monkeypatch.setenv("PANTHER_PLUGINS", "halvng")
    plugins.reset_plugin_manager()
    with pytest.raises(plugins.PluginError, match=r"'halvng'.*PANTHER_PLUGINS.*'halving'"):
        plugins.get_plugin_manager()


def test_errors_with_autoload_off_mention_the_switch(monkeypatch):
    monkeypatch.setenv("PANTHER_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset_plugin_manager()
    with pytest.raises(ValueError, match=r"unknown search algorithm 'halving'.*"
                                         r"PANTHER_DISABLE_PLUGIN_AUTOLOAD=1"):
        plugins.get_search_algorithm("halving")
    with pytest.raises(ValueError, match="PANTHER_DISABLE_PLUGIN_AUTOLOAD"):
        plugins.get_layer_type("Conv1d")


def test_cli_plugin_options(capsys):
    from panther.cli import main

    assert main(["--plugin", "halving", "plugins", "--json"]) == 0
    listed = {p["name"] for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert "halving" in listed and "conv1d" not in listed
    assert main(["plugins", "--no-plugin", "conv1d", "--json"]) == 0  # after the command too
    listed = {p["name"] for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert "halving" in listed and "conv1d" not in listed


# --------------------------------------------------------------------------- public API only


def _private_uses(path: Path, inherited: set[str]) -> list[str]:
    """Private names of panther that a plugin source file touches (AST scan)."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    found = []
    panther_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("panther"):
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"{path.name}:{node.lineno} imports {p}" for p in parts if p.startswith("_")]
            panther_names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("panther"):
                    found += [f"{path.name}:{node.lineno} imports {p}"
                              for p in alias.name.split(".") if p.startswith("_")]
                    panther_names.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name) and base.id in panther_names:
            found.append(f"{path.name}:{node.lineno} uses {node.attr} of panther")
        elif isinstance(base, ast.Name) and base.id == "self" and node.attr in inherited:
            found.append(f"{path.name}:{node.lineno} uses inherited private self.{node.attr}")
    return found


def test_example_plugins_use_only_public_panther_api():
    from panther.tuner import LayerType, LowRankLayerType, SearchAlgorithm

    inherited = {
        name
        for cls in (SearchAlgorithm, LayerType, LowRankLayerType)
        for klass in cls.__mro__
        if klass.__module__.startswith("panther")
        for name in vars(klass)
        if name.startswith("_") and not name.startswith("__")
    } | {"_n_evaluated", "_n_proposed", "_best_params", "_best_score"}
    packages = sorted((REPO / "plugins").glob("*/"))
    assert len(packages) >= 2
    problems = []
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            problems += _private_uses(path, inherited)
    assert not problems, problems
    # The scan itself catches what it should.
    bad = REPO / "plugins"  # any directory works for the temporary file's parent check
    del bad
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.py"
        sample.write_text(
            "from panther.tuner.plugins import _lookup\n"
            "import panther.tuner.plugins as p\n"
            "p._registry('x')\n"
            "class T:\n"
            "    def f(self):\n"
            "        return self._fans(1)\n"
        )
        assert len(_private_uses(sample, {"_fans"})) == 3


# --------------------------------------------------------------------------- the guide, end to end


def _guide_package(tmp_path: Path) -> tuple[Path, str]:
    """The plugin of docs/plugins.md, file by file, installed as an entry point; and its config."""
    from test_docs import _FILE_HEADER, extract_blocks

    blocks = extract_blocks(REPO / "docs" / "plugins.md")
    modules = {}
    for block in blocks:
        if block.lang == "python" and (m := _FILE_HEADER.match(block.code.splitlines()[0])):
            modules[m.group(1).removesuffix(".py")] = block.code
    assert set(modules) == {"thirdparty_layers", "panther_mutation", "mutation_model"}
    [config] = [b.code for b in blocks if b.lang == "toml" and "model =" in b.code]
    root = make_distribution(tmp_path / "site", "panther-mutation", "0.1.0",
                             {"mutation": "panther_mutation"}, modules)
    return root, config


def test_plugin_from_the_guide_end_to_end(tmp_path, monkeypatch):
    """A plugin written from docs/plugins.md alone, installed, tuned from Python and the CLI."""
    from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs

    root, config = _guide_package(tmp_path)
    for name in ("thirdparty_layers", "panther_mutation", "mutation_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugin_manager()  # strict: the guide's plugin must pass every check
    info = {i.name: i for i in plugins.list_plugins()}["mutation"]
    assert info.distribution == "panther-mutation" and info.origin == "entry point"
    assert info.contributes == {"evaluators": ["top1_agreement"], "layer_types": ["Conv1D"],
                                "search_algorithms": ["mutation"]}
    assert not plugins.problems() and not plugins.conflicts()
    import panther_mutation  # the guide's module uses public panther names only
    from mutation_model import build_model, inputs

    assert not _private_uses(Path(panther_mutation.__file__), set())

    # From Python, by name.
    model, reference = build_model(), build_model()
    tuner = SKAutoTuner(
        model, TuningConfigs([LayerConfig({"type": "Conv1D"}, "auto")]),
        accuracy_eval_func=plugins.get_evaluator("top1_agreement", reference=reference,
                                                 inputs=inputs()),
        accuracy_threshold=0.9,
        search_algorithm=plugins.get_search_algorithm("mutation", n_trials=4, seed=0),
    )
    tuner.tune()
    tuned = tuner.apply_best_params()
    assert {type(m).__name__ for m in tuned.modules()} >= {"SKLinear"}

    # From the CLI, with the TOML config of the guide.
    (tmp_path / "config.toml").write_text(config.replace("n_trials = 6", "n_trials = 3"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)]),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "panther.cli", "tune", "config.toml", "--output", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["search"]["backend"] == "mutation"
    assert summary["after"]["accuracy"] >= 0.9
    assert summary["after"]["params"] < summary["before"]["params"]  # layers were sketched


def test_reference_model_marker_replaces_the_magic_name(tmp_path):
    from panther.tuner import ReferenceModel
    from panther.tuner.evaluators import agreement, reference_model_parameters, throughput

    def marked(original: ReferenceModel, inputs):
        return original

    def legacy(reference_model, inputs):
        return reference_model

    assert reference_model_parameters(marked) == ["original"]
    assert reference_model_parameters(legacy) == ["reference_model"]
    assert reference_model_parameters(agreement) == ["reference_model"]
    assert reference_model_parameters(throughput) == []
    # String annotations (``from __future__ import annotations``) resolve too.
    source = tmp_path / "marked_mod.py"
    source.write_text(
        "from __future__ import annotations\n"
        "from panther.tuner import ReferenceModel\n"
        "class Factory:\n"
        "    def __init__(self, base: ReferenceModel, scale: float = 1.0):\n"
        "        self.base = base\n"
    )
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    assert reference_model_parameters(namespace["Factory"]) == ["base"]


def test_a_plugin_can_declare_hooks_of_its_own():
    from panther.tuner import hookspec
    from panther.tuner.hookspecs import Registry, registry_hook

    class MetricSpecs:
        @hookspec
        @registry_hook(Registry("metric", check=lambda obj: None if callable(obj) else "not callable"))
        def panther_metrics(self):
            """Contribute metrics by name."""

    class Owner:
        PANTHER_HOOKSPECS = (MetricSpecs,)

        @hookimpl
        def panther_metrics(self):
            return {"mse": lambda a, b: float(((a - b) ** 2).mean())}

    class Other:
        @hookimpl
        def panther_metrics(self):
            return {"mae": lambda a, b: float((a - b).abs().mean()), "broken": 3}

    plugins.register_plugin(Owner(), name="metric-owner")
    plugins.register_plugin(Other(), name="metric-user")
    with pytest.warns(PluginWarning, match=r"'metric-user'.*'broken' not callable"):
        metrics = plugins.registry("panther_metrics")
    assert sorted(metrics) == ["mae", "mse"] and metrics.plugin_of("MAE") == "metric-user"
    info = {i.name: i for i in plugins.list_plugins()}
    assert info["metric-owner"].contributes == {"metrics": ["mse"]}
