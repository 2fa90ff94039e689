"""The plugin contract: every extension point of panther, in one place.

panther uses pluggy with the project name ``"panther"``. A plugin is any module
or object with functions decorated by :data:`hookimpl` and named like the specs
below. Installed packages advertise plugins through the ``panther`` entry-point
group::

    [project.entry-points.panther]
    my_plugin = "my_package.plugin"

The built-in search backends, layer types and evaluators are registered through
exactly these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from panther.tuner.layers.base import LayerType
    from panther.tuner.search.base import SearchAlgorithm

PROJECT_NAME = "panther"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Contribute search algorithms by name.

    Return ``{name: class}``; each class subclasses
    :class:`panther.tuner.search.base.SearchAlgorithm`. Names are matched
    case-insensitively (``"optuna"``, ``"grid"``, ...) by the CLI and by
    :func:`panther.tuner.plugins.get_search_algorithm`.
    """


@hookspec
def panther_optuna_samplers() -> dict[str, Callable[..., optuna.samplers.BaseSampler]]:
    """Contribute Optuna samplers by name.

    Return ``{name: factory}`` where ``factory(seed=None, **kwargs)`` builds a
    sampler, so ``OptunaSearch(sampler="tpe")`` and the CLI can pick one by name.
    """


@hookspec
def panther_layer_types() -> list[LayerType]:
    """Contribute sketchable layer types.

    Return a list of :class:`panther.tuner.layers.base.LayerType` instances. Each
    says which torch modules it replaces, how to build the sketched layer, its
    tunable parameters, its "auto" search space and its cost model.
    """


@hookspec
def panther_evaluators() -> dict[str, Callable[..., Callable[[nn.Module], float]]]:
    """Contribute evaluator factories by name.

    Return ``{name: factory}``; ``factory(**options)`` returns a function
    ``model -> float`` (higher is better unless the evaluator's docs say otherwise)
    usable as an accuracy or optimisation function.
    """


@hookspec
def panther_trial_finished(layer_name: str, trial: dict[str, Any]) -> None:
    """Called after each trial with the layer (group) name and the trial's record.

    The record has the keys of a row of ``SKAutoTuner.get_results_dataframe()``.
    """


@hookspec
def panther_layer_finished(layer_name: str, best_params: dict[str, Any] | None, best_score: float | None) -> None:
    """Called when the search for one layer (group) ends."""


@hookspec
def panther_tuning_finished(results: Any) -> None:
    """Called once when ``SKAutoTuner.tune()`` returns, with the tuner's results object."""
