"""panther's autotuner: pick sketching parameters per layer under an accuracy constraint.

Public API::

    from panther.tuner import (
        SKAutoTuner, LayerConfig, TuningConfigs, Categorical, Int, Float,
        OptunaSearch, SkoptSearch, GridSearch, RandomSearch, ModelVisualizer,
        load_tuning_results, register_plugin, list_plugins, hookimpl,
    )

Plugin authors use only these public names: ``hookimpl``, ``PLUGIN_API``,
``SearchAlgorithm``, ``LayerType``, ``LowRankLayerType``, ``Cost``, ``Evaluator``,
``ReferenceModel``, the parameter classes, ``register_plugin``/``unregister_plugin``,
``PluginWarning``/``PluginError``/``PluginConflictError`` (docs/plugins.md).

Names other than the configuration classes are imported lazily on first access,
so ``import panther.tuner`` stays cheap and a missing optional backend only
fails when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from panther.tuner.config import Categorical, Float, Int, LayerConfig, TuningConfigs
from panther.tuner.hookspecs import PLUGIN_API, hookimpl, hookspec

# name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "SKAutoTuner": ("panther.tuner.tuner", "SKAutoTuner"),
    "TuningWarning": ("panther.tuner.tuner", "TuningWarning"),
    "TuningResults": ("panther.tuner.results", "TuningResults"),
    "LayerChoice": ("panther.tuner.results", "LayerChoice"),
    "load_tuning_results": ("panther.tuner.results", "load_tuning_results"),
    "OptunaSearch": ("panther.tuner.search.optuna", "OptunaSearch"),
    "SkoptSearch": ("panther.tuner.search.skopt", "SkoptSearch"),
    "GridSearch": ("panther.tuner.search.grid", "GridSearch"),
    "RandomSearch": ("panther.tuner.search.random", "RandomSearch"),
    "SearchAlgorithm": ("panther.tuner.search.base", "SearchAlgorithm"),
    "LayerType": ("panther.tuner.layers.base", "LayerType"),
    "Cost": ("panther.tuner.layers.base", "Cost"),
    "LowRankLayerType": ("panther.tuner.layers.linear", "LowRankLayerType"),
    "Evaluator": ("panther.tuner.evaluators", "Evaluator"),
    "ReferenceModel": ("panther.tuner.evaluators", "ReferenceModel"),
    "PluginWarning": ("panther.tuner.plugins", "PluginWarning"),
    "PluginError": ("panther.tuner.plugins", "PluginError"),
    "PluginConflictError": ("panther.tuner.plugins", "PluginConflictError"),
    "ModelVisualizer": ("panther.tuner.visualizer", "ModelVisualizer"),
    "select_layers": ("panther.tuner.selection", "select_layers"),
    "register_plugin": ("panther.tuner.plugins", "register_plugin"),
    "unregister_plugin": ("panther.tuner.plugins", "unregister_plugin"),
    "list_plugins": ("panther.tuner.plugins", "list_plugins"),
    "get_plugin_manager": ("panther.tuner.plugins", "get_plugin_manager"),
    "get_evaluator": ("panther.tuner.plugins", "get_evaluator"),
}

__all__ = [
    "Categorical",
    "Float",
    "Int",
    "LayerConfig",
    "PLUGIN_API",
    "TuningConfigs",
    "hookimpl",
    "hookspec",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'panther.tuner' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
