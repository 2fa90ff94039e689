"""The core plugin contract: every extension point of panther's tuner, in one place.

panther uses pluggy with the project name ``"panther"``. A plugin is a module, a
class (instantiated once, with no arguments) or an object with functions
decorated by :data:`hookimpl` and named like the specs below. Installed packages
advertise plugins through the ``panther`` entry-point group::

    [project.entry-points.panther]
    my_plugin = "my_package.plugin"

The built-in search backends, layer types and evaluators are registered through
exactly these hooks. docs/plugins.md is the author's guide.

**Registry hooks** (``panther_search_algorithms``, ``panther_layer_types``,
``panther_evaluators``) contribute named objects. Each plugin's contribution is
checked when the registry is built; a clash on one name makes only that name
ambiguous (using it raises :class:`panther.tuner.plugins.PluginConflictError`).

**Event hooks** (``panther_*_finished``) observe a tuning run. A hook that raises
becomes a :class:`panther.tuner.plugins.PluginWarning` naming the plugin; it never
stops tuning.

**Declarations** a plugin module or object may carry (plain attributes, not hooks):

* ``PANTHER_PLUGIN_API = 1`` -- the plugin API version the plugin was written
  for; a mismatch with :data:`PLUGIN_API` gives a clear warning (an error in
  strict mode).
* ``PANTHER_HOOKSPECS = (module, ...)`` -- extra hook specs the plugin defines
  for *its own* extension points (added with ``PluginManager.add_hookspecs``
  before the plugin's implementations are checked). The Optuna backend uses it
  for ``panther_optuna_samplers`` (:mod:`panther.tuner.search.optuna_samplers`).

Every implementation is checked at registration: an unknown ``panther_*`` name or
an argument the spec does not offer gives a ``PluginWarning`` naming the plugin,
the hook and the closest spec name (an error in strict mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from panther.tuner.layers.base import LayerType
    from panther.tuner.search.base import SearchAlgorithm

__all__ = ["PLUGIN_API", "PROJECT_NAME", "Registry", "hookimpl", "hookspec", "registry_hook"]

PROJECT_NAME = "panther"

#: Version of this contract. It changes only when an existing hook or declaration
#: changes incompatibly; new optional hooks keep the number.
PLUGIN_API = 1

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class Registry:
    """What a registry hook contributes, read by the plugin host.

    Attributes:
        what: the singular noun used in messages (``"search algorithm"``).
        by_attribute: ``None`` when the hook returns ``{name: object}``; otherwise
            the hook returns a list of objects named by this attribute.
        case_sensitive: whether names are compared exactly (layer types, like the
            class names selectors also accept) or case-insensitively (keywords
            such as backend and evaluator names).
        check: ``check(obj) -> problem or None``; a contribution with a problem is
            dropped with a warning naming its plugin.
    """

    what: str
    by_attribute: str | None = None
    case_sensitive: bool = False
    check: Callable[[Any], str | None] | None = None


def registry_hook(registry: Registry) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a hook spec as a registry of named contributions (see :class:`Registry`)."""

    def mark(spec: Callable[..., Any]) -> Callable[..., Any]:
        spec.panther_registry = registry  # type: ignore[attr-defined]
        return spec

    return mark


def _search_class_problem(obj: Any) -> str | None:
    from panther.tuner.search.base import SearchAlgorithm

    if isinstance(obj, type) and issubclass(obj, SearchAlgorithm):
        return None
    return f"must be a SearchAlgorithm subclass, got {obj!r}"


def _layer_type_problem(obj: Any) -> str | None:
    from panther.tuner.layers.base import LayerType

    if not isinstance(obj, LayerType):
        return f"expected LayerType instances, got {type(obj).__name__}"
    return None


def _factory_problem(obj: Any) -> str | None:
    return None if callable(obj) else f"must be a callable factory, got {obj!r}"


@hookspec
@registry_hook(Registry("search algorithm", check=_search_class_problem))
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Contribute search algorithms by name.

    Return ``{name: class}``; each class subclasses
    :class:`panther.tuner.search.base.SearchAlgorithm` and is instantiated with the
    keyword arguments the user gives (``SKAutoTuner(search_algorithm="name")``,
    ``[search] backend = "name"``). Names are compared case-insensitively.
    """


@hookspec
@registry_hook(
    Registry("layer type", by_attribute="name", case_sensitive=True, check=_layer_type_problem)
)
def panther_layer_types() -> list[LayerType]:
    """Contribute sketchable layer types.

    Return a list of :class:`panther.tuner.layers.base.LayerType` instances. Each
    says which torch modules it replaces, how to build the sketched layer, its
    tunable parameters, its "auto" search space and its cost model. Layer-type
    names are compared exactly, like the class names selectors also accept.
    """


@hookspec
@registry_hook(Registry("evaluator", check=_factory_problem))
def panther_evaluators() -> dict[str, Callable[..., Callable[[nn.Module], float]]]:
    """Contribute evaluator factories by name.

    Return ``{name: factory}``; ``factory(**options)`` returns a function
    ``model -> float`` (ideally a :class:`panther.tuner.evaluators.Evaluator`,
    which carries its direction). A factory parameter annotated
    :data:`panther.tuner.evaluators.ReferenceModel` receives an untouched copy of
    the model being tuned when the CLI builds it. Names are compared
    case-insensitively.
    """


@hookspec
def panther_trial_finished(layer_name: str, trial: dict[str, Any]) -> None:
    """Called after each trial with the layer (group) name and the trial's record.

    The record has the keys of a row of ``SKAutoTuner.get_results_dataframe()``.
    """


@hookspec
def panther_layer_finished(
    layer_name: str, best_params: dict[str, Any] | None, best_score: float | None
) -> None:
    """Called when the search for one layer (group) ends, with its best feasible result."""


@hookspec
def panther_tuning_finished(results: Any) -> None:
    """Called once when ``SKAutoTuner.tune()`` returns, with the tuner's results object."""
