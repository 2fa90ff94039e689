"""The plugin host's parts: name lookup shared with the CLI, and the modules behind plugins.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from panther.cli.errors import ConfigError
from panther.cli.schema import find_name
from panther.tuner import hookimpl, plugins
from panther.tuner.search import RandomSearch


@pytest.fixture(autouse=True)
def fresh_manager():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


class _Clash:
    """Claims the built-in name "random" a second time (an entry-point-ranked clash)."""

    @hookimpl
    def panther_search_algorithms(self):
        return {"Random": RandomSearch}


def test_spelling_follows_each_registry_rule():
    algos = plugins.search_algorithms()
    assert algos.spelling("OPTUNA") == "optuna" and algos.spelling("optuna") == "optuna"
    assert algos.spelling("annealing") is None
    types = plugins.registry("panther_layer_types")
    assert types.spelling("Linear") == "Linear"
    assert types.spelling("linear") is None  # layer-type names are exact


def test_cli_find_name_uses_the_host_lookup():
    path = Path("tune.toml")
    algos = plugins.search_algorithms()
    assert find_name(path, "search.backend", "search backend", "Random", algos) == "random"
    with pytest.raises(ConfigError) as err:
        find_name(path, "search.backend", "search backend", "randum", algos)
    text = str(err.value)
    assert "search.backend" in text and "no search backend named 'randum'" in text
    assert "did you mean 'random'" in text and "optuna" in text


def test_ambiguous_names_are_found_and_raise_on_use(monkeypatch):
    from panther.tuner import plugin_checks

    plugins.get_plugin_manager().register(_Clash(), name="clash")
    # Registered on the manager directly counts as by hand and wins with a warning; rank it
    # as an entry point to make the name ambiguous.
    monkeypatch.setitem(plugin_checks.origins, "clash", plugin_checks.Origin(plugin_checks.ENTRY_POINT))
    monkeypatch.setitem(plugin_checks.origins, "panther.tuner.search.random",
                        plugin_checks.Origin(plugin_checks.ENTRY_POINT))
    algos = plugins.search_algorithms()
    assert algos.spelling("RANDOM") in ("random", "Random")
    with pytest.raises(plugins.PluginConflictError, match="claimed by"):
        algos.lookup("random")
    assert [c.name for c in plugins.conflicts()] in (["random"], ["Random"])


def test_public_names_stay_importable_from_plugins():
    for name in plugins.__all__:
        assert hasattr(plugins, name), name
    assert plugins.hookspecs.PLUGIN_API  # the plugin contract stays reachable as before
