"""The plugin host: finds, registers and queries panther plugins.

Everything the tuner can use -- search algorithms, Optuna samplers, sketchable
layer types, evaluators -- arrives through the hooks in
:mod:`panther.tuner.hookspecs`. The built-ins are ordinary plugins registered
first; installed packages are discovered through the ``panther`` entry-point
group::

    # pyproject.toml of a third-party package
    [project.entry-points.panther]
    my_plugin = "my_package.plugin"     # a module with @hookimpl functions

Set ``PANTHER_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry-point discovery (only
built-ins and plugins registered in code with :func:`register_plugin` are used).

Failure isolation: a plugin that fails to import, fails pluggy's validation, or
raises inside a hook produces a :class:`PluginWarning` naming the plugin and its
distribution; its contributions are dropped and every other plugin keeps working.

Name conflicts (search algorithms, samplers, layer types and evaluators are each
a separate namespace; names are compared case-insensitively). Every plugin has a
*rank*: built-in (0), discovered through an entry point (1), or registered by hand
with :func:`register_plugin` (2).

* A hand-registered plugin overrides a name held by a lower-ranked plugin -- an
  explicit choice made in code -- with a :class:`PluginWarning` naming both, so a
  built-in never loses silently.
* Any other clash (two plugins of the same rank, or an installed package claiming
  a built-in's name) raises :class:`PluginConflictError` naming both plugins and
  their distributions when that registry is first used.
* When several layer types handle the same torch module,
  :func:`layer_type_for` prefers the highest rank and, within a rank, raises
  :class:`PluginConflictError`.

Registries are cached and rebuilt whenever the set of registered plugins changes.
"""

from __future__ import annotations

import importlib
import importlib.metadata as importlib_metadata
import inspect
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from panther.tuner import hookspecs

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginConflictError",
    "PluginInfo",
    "PluginWarning",
    "emit",
    "evaluators",
    "get_evaluator",
    "get_layer_type",
    "get_plugin_manager",
    "get_search_algorithm",
    "layer_type_for",
    "layer_types",
    "list_plugins",
    "make_sampler",
    "optuna_samplers",
    "register_plugin",
    "reset_plugin_manager",
    "search_algorithms",
    "unregister_plugin",
]

ENTRY_POINT_GROUP = "panther"
AUTOLOAD_ENV = "PANTHER_DISABLE_PLUGIN_AUTOLOAD"

#: Modules registered as built-in plugins, in this order. A missing optional
#: module (``panther.tuner.evaluators`` while it is being written) is skipped.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "panther.tuner.search.optuna",
    "panther.tuner.search.skopt",
    "panther.tuner.search.grid",
    "panther.tuner.search.random",
    "panther.tuner.layers.linear",
    "panther.tuner.layers.conv2d",
    "panther.tuner.layers.attention",
    "panther.tuner.evaluators",
)
_OPTIONAL_BUILTINS = frozenset({"panther.tuner.evaluators"})

_RANK_BUILTIN, _RANK_ENTRY_POINT, _RANK_MANUAL = 0, 1, 2
_RANK_LABEL = {
    _RANK_BUILTIN: "built-in",
    _RANK_ENTRY_POINT: "entry point",
    _RANK_MANUAL: "registered by hand",
}

# The registry kinds: kind -> the hook that contributes them.
_KINDS: dict[str, str] = {
    "search_algorithms": "panther_search_algorithms",
    "optuna_samplers": "panther_optuna_samplers",
    "layer_types": "panther_layer_types",
    "evaluators": "panther_evaluators",
}


class PluginWarning(UserWarning):
    """A plugin failed to load or raised in a hook; it was skipped."""


class PluginConflictError(ValueError):
    """Two plugins claim the same name for the same kind of extension."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as shown by :func:`list_plugins` and the CLI.

    Attributes:
        name: the plugin's name in the plugin manager (entry-point name for
            discovered plugins, module name for built-ins).
        distribution: the installed distribution that provides it, or ``None``.
        version: that distribution's version, or ``None``.
        builtin: whether it ships with panther.
        contributes: kind (``"search_algorithms"``, ``"optuna_samplers"``,
            ``"layer_types"``, ``"evaluators"``, ``"events"``) -> names.
    """

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    contributes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _Origin:
    rank: int
    distribution: str | None
    version: str | None


@dataclass
class _Entry:
    """One contribution: the object plus the plugin that made it."""

    name: str
    obj: Any
    plugin_name: str
    origin: _Origin


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_origins: dict[str, _Origin] = {}
_cache_key: tuple[Any, ...] | None = None
_cache: dict[str, Any] = {}


# --------------------------------------------------------------------------- manager


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use."""
    global _manager
    with _lock:
        if _manager is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            pm.add_hookspecs(hookspecs)
            _manager = pm
            _register_builtins(pm)
            if os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
                _load_entry_points(pm)
        return _manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager and every cached registry (mainly for tests).

    The next call to any function of this module builds a fresh manager and
    re-reads the environment (including ``PANTHER_DISABLE_PLUGIN_AUTOLOAD``).
    """
    global _manager, _cache_key
    with _lock:
        _manager = None
        _origins.clear()
        _cache.clear()
        _cache_key = None


def register_plugin(obj: Any, name: str | None = None) -> str:
    """Register a plugin object (a module, class or instance with ``@hookimpl`` methods).

    Hand-registered plugins take precedence over built-ins and installed plugins
    when they contribute the same name (with a :class:`PluginWarning`).

    Returns:
        The name the plugin was registered under.

    Raises:
        ValueError: if the object or the name is already registered, or the
            plugin's hooks do not match the specs in :mod:`panther.tuner.hookspecs`.
    """
    pm = get_plugin_manager()
    with _lock:
        if name is not None and pm.get_plugin(name) is not None:
            raise ValueError(
                f"a plugin named {name!r} is already registered; "
                f"call unregister_plugin({name!r}) first or pick another name"
            )
        if pm.is_registered(obj):
            raise ValueError(
                f"plugin {obj!r} is already registered as {pm.get_name(obj)!r}; "
                "unregister it first to register it again"
            )
        try:
            registered = pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise ValueError(
                f"plugin {name or obj!r} does not match the panther hook specs: {exc}"
            ) from exc
        if registered is None:
            raise ValueError(f"plugin name {name!r} is blocked; pick another name")
        module = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
        dist, version = _distribution_of(module)
        _origins[registered] = _Origin(_RANK_MANUAL, dist, version)
        _invalidate()
        return registered


def unregister_plugin(name: str) -> Any:
    """Unregister the plugin called ``name`` and return it.

    Raises:
        KeyError: if no plugin has that name (the message lists the names there are).
    """
    pm = get_plugin_manager()
    with _lock:
        if pm.get_plugin(name) is None:
            names = sorted(n for n, _ in pm.list_name_plugin())
            raise KeyError(f"no plugin named {name!r}; registered plugins: {names}")
        plugin = pm.unregister(name=name)
        _origins.pop(name, None)
        _invalidate()
        return plugin


def _invalidate() -> None:
    global _cache_key
    _cache.clear()
    _cache_key = None


_PANTHER_DIST = "panther-rnla"


def _panther_distribution() -> tuple[str, str | None]:
    """panther's own distribution name and version (installed metadata, else ``__version__``)."""
    try:
        return _PANTHER_DIST, importlib_metadata.version(_PANTHER_DIST)
    except importlib_metadata.PackageNotFoundError:
        # Running from a source tree that is not pip-installed.
        return _PANTHER_DIST, getattr(importlib.import_module("panther"), "__version__", None)


def _register_builtins(pm: pluggy.PluginManager) -> None:
    dist, version = _panther_distribution()
    for module_name in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only the optional module itself may be absent; a missing dependency
            # inside a built-in is a real error worth a warning.
            if module_name in _OPTIONAL_BUILTINS and exc.name == module_name:
                continue
            _warn(
                f"built-in plugin {module_name!r} (distribution {dist!r}) failed to import: {exc!r}"
            )
            continue
        except Exception as exc:  # a broken built-in must not take the host down
            _warn(
                f"built-in plugin {module_name!r} (distribution {dist!r}) failed to import: {exc!r}"
            )
            continue
        try:
            pm.register(module, name=module_name)
        except Exception as exc:
            _warn(f"built-in plugin {module_name!r} could not be registered: {exc}")
            continue
        _origins[module_name] = _Origin(_RANK_BUILTIN, dist, version)


def _iter_entry_points() -> list[importlib_metadata.EntryPoint]:
    # The same distribution can be visible twice (e.g. an editable install plus
    # a source tree on sys.path); one registration per (name, value) is enough.
    seen: set[tuple[str, str]] = set()
    result = []
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in seen:
            continue
        seen.add(key)
        result.append(ep)
    return result


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every ``panther`` entry point, warning about (and skipping) broken ones.

    pluggy's own ``load_setuptools_entrypoints`` stops at the first import error,
    so entry points are loaded one by one here.
    """
    for ep in _iter_entry_points():
        dist_name = getattr(ep.dist, "name", None) if ep.dist is not None else None
        dist_version = getattr(ep.dist, "version", None) if ep.dist is not None else None
        label = _describe(ep.name, dist_name, dist_version)
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            existing = _origins.get(ep.name)
            if existing is None or existing.distribution != dist_name:
                _warn(f"{label} was not loaded: the plugin name {ep.name!r} is already taken")
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            _warn(
                f"{label} failed to import ({ep.value}): {type(exc).__name__}: {exc}; it is skipped"
            )
            continue
        if pm.is_registered(obj):
            _warn(
                f"{label} points at an object already registered as {pm.get_name(obj)!r}; skipped"
            )
            continue
        try:
            pm.register(obj, name=ep.name)
        except Exception as exc:
            _warn(f"{label} could not be registered: {type(exc).__name__}: {exc}; it is skipped")
            continue
        _origins[ep.name] = _Origin(_RANK_ENTRY_POINT, dist_name, dist_version)


def _distribution_of(module: ModuleType | None) -> tuple[str | None, str | None]:
    if module is None:
        return None, None
    top = module.__name__.split(".")[0]
    if top == "panther":
        return _panther_distribution()
    try:
        dists = importlib_metadata.packages_distributions().get(top, [])
    except Exception:  # broken metadata on sys.path must not break registration
        dists = []
    if not dists:
        return None, None
    try:
        return dists[0], importlib_metadata.version(dists[0])
    except importlib_metadata.PackageNotFoundError:
        return dists[0], None


def _describe(plugin_name: str, dist: str | None, version: str | None) -> str:
    where = (
        f"distribution {dist!r}" + (f" {version}" if version else "") if dist else "no distribution"
    )
    return f"panther plugin {plugin_name!r} ({where})"


def _origin(plugin_name: str) -> _Origin:
    # Plugins registered directly on the pluggy manager count as registered by hand.
    return _origins.get(plugin_name, _Origin(_RANK_MANUAL, None, None))


def _warn(message: str) -> None:
    warnings.warn(message, PluginWarning, stacklevel=3)


# --------------------------------------------------------------------------- hook calls


def _impls(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    caller = getattr(pm.hook, hook_name, None)
    if caller is None:
        raise ValueError(
            f"unknown panther hook {hook_name!r}; hooks are "
            f"{sorted(n for n in dir(hookspecs) if n.startswith('panther_'))}"
        )
    # get_hookimpls() lists implementations in registration order (pluggy *calls*
    # them in reverse), so iterating it keeps the built-ins first. Wrappers only
    # wrap calls and contribute nothing of their own.
    return [i for i in caller.get_hookimpls() if not (i.wrapper or i.hookwrapper)]


def _call_impl(impl: Any, hook_name: str, kwargs: dict[str, Any]) -> tuple[bool, Any]:
    try:
        args = [kwargs[a] for a in impl.argnames]
    except KeyError as exc:
        origin = _origin(impl.plugin_name)
        _warn(
            f"{_describe(impl.plugin_name, origin.distribution, origin.version)} hook {hook_name} "
            f"asks for argument {exc.args[0]!r}, which the host does not pass; it is skipped"
        )
        return False, None
    try:
        return True, impl.function(*args)
    except Exception as exc:
        origin = _origin(impl.plugin_name)
        _warn(
            f"{_describe(impl.plugin_name, origin.distribution, origin.version)} raised in "
            f"{hook_name}: {type(exc).__name__}: {exc}; its contribution is ignored"
        )
        return False, None


def emit(hook_name: str, **kwargs: Any) -> list[Any]:
    """Call the lifecycle hook ``hook_name`` on every plugin and return their results.

    A plugin that raises produces a :class:`PluginWarning` naming it and its
    distribution; the other plugins are still called and the caller goes on.

    Raises:
        ValueError: if ``hook_name`` is not a panther hook.
    """
    pm = get_plugin_manager()
    results = []
    for impl in _impls(pm, hook_name):
        ok, value = _call_impl(impl, hook_name, kwargs)
        if ok and value is not None:
            results.append(value)
    return results


def _check_contribution(kind: str, name: Any, obj: Any) -> str | None:
    """Why a contributed ``(name, obj)`` is unusable, or ``None`` when it is fine."""
    if kind == "layer_types":
        from panther.tuner.layers.base import LayerType

        if not isinstance(obj, LayerType):
            return f"expected LayerType instances, got {type(obj).__name__}"
        if not isinstance(getattr(obj, "name", None), str) or not obj.name:
            return f"layer type {obj!r} has no name"
        return None
    if not isinstance(name, str) or not name:
        return f"names must be non-empty strings, got {name!r}"
    if kind == "search_algorithms":
        from panther.tuner.search.base import SearchAlgorithm

        if not (inspect.isclass(obj) and issubclass(obj, SearchAlgorithm)):
            return f"{name!r} must map to a SearchAlgorithm subclass, got {obj!r}"
        return None
    if not callable(obj):
        return f"{name!r} must map to a callable factory, got {obj!r}"
    return None


def _collect(kind: str) -> list[_Entry]:
    """Every contribution of ``kind``, per plugin, with broken ones warned about and dropped."""
    pm = get_plugin_manager()
    hook_name = _KINDS[kind]
    entries: list[_Entry] = []
    for impl in _impls(pm, hook_name):
        ok, result = _call_impl(impl, hook_name, {})
        if not ok or result is None:
            continue
        origin = _origin(impl.plugin_name)
        label = _describe(impl.plugin_name, origin.distribution, origin.version)
        if kind == "layer_types":
            if isinstance(result, dict):
                result = list(result.values())
            if not isinstance(result, (list, tuple)):
                _warn(
                    f"{label} {hook_name} must return a list, got {type(result).__name__}; ignored"
                )
                continue
            pairs = [(getattr(obj, "name", None), obj) for obj in result]
        else:
            if not isinstance(result, dict):
                _warn(
                    f"{label} {hook_name} must return a dict, got {type(result).__name__}; ignored"
                )
                continue
            pairs = list(result.items())
        for name, obj in pairs:
            problem = _check_contribution(kind, name, obj)
            if problem is not None:
                _warn(f"{label} {hook_name}: {problem}; that entry is ignored")
                continue
            entries.append(_Entry(name, obj, impl.plugin_name, origin))
    return entries


def _resolve(kind: str, entries: list[_Entry]) -> dict[str, _Entry]:
    """Apply the precedence rule of the module docstring; key = lower-cased name."""
    chosen: dict[str, _Entry] = {}
    for entry in entries:
        key = entry.name.lower()
        other = chosen.get(key)
        if other is None:
            chosen[key] = entry
            continue
        if other.plugin_name == entry.plugin_name:
            raise PluginConflictError(
                f"{_label(entry)} contributes the {_singular(kind)} name {entry.name!r} twice"
            )
        high, low = (entry, other) if entry.origin.rank >= other.origin.rank else (other, entry)
        if high.origin.rank == _RANK_MANUAL and low.origin.rank < _RANK_MANUAL:
            _warn(
                f"{_singular(kind)} {high.name!r} from {_label(high)} overrides the one from "
                f"{_label(low)} (hand-registered plugins take precedence)"
            )
            chosen[key] = high
            continue
        raise PluginConflictError(
            f"two plugins claim the {_singular(kind)} name {entry.name!r}: {_label(other)} and "
            f"{_label(entry)}. Uninstall or unregister one of them "
            f"(panther.tuner.plugins.unregister_plugin(name)), or register the one you want "
            f"by hand with register_plugin() to make it take precedence"
        )
    return chosen


def _label(entry: _Entry) -> str:
    return (
        _describe(entry.plugin_name, entry.origin.distribution, entry.origin.version)
        + f" [{_RANK_LABEL[entry.origin.rank]}]"
    )


def _singular(kind: str) -> str:
    return {
        "search_algorithms": "search algorithm",
        "optuna_samplers": "Optuna sampler",
        "layer_types": "layer type",
        "evaluators": "evaluator",
    }[kind]


def _registry(kind: str) -> dict[str, _Entry]:
    global _cache_key
    pm = get_plugin_manager()
    with _lock:
        key = tuple((n, id(p)) for n, p in pm.list_name_plugin())
        if key != _cache_key:
            _cache.clear()
            _cache_key = key
        if kind not in _cache:
            _cache[kind] = _resolve(kind, _collect(kind))
        return _cache[kind]


def _lookup(kind: str, name: str) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(f"{_singular(kind)} names are strings, got {type(name).__name__}")
    registry = _registry(kind)
    entry = registry.get(name.lower())
    if entry is None:
        known = sorted(e.name for e in registry.values())
        raise ValueError(
            f"unknown {_singular(kind)} {name!r}; available: {known}. "
            "Install a plugin that provides it or register one with register_plugin()"
        )
    return entry


# --------------------------------------------------------------------------- registries


def search_algorithms() -> dict[str, type]:
    """``{name: SearchAlgorithm subclass}`` from every plugin."""
    return {e.name: e.obj for e in _registry("search_algorithms").values()}


def get_search_algorithm(name: str, **kwargs: Any) -> Any:
    """Instantiate the search algorithm registered as ``name`` (case-insensitive) with ``kwargs``."""
    return _lookup("search_algorithms", name).obj(**kwargs)


def optuna_samplers() -> dict[str, Callable[..., Any]]:
    """``{name: factory(seed=None, **kw)}`` of every Optuna sampler contributed by plugins."""
    return {e.name: e.obj for e in _registry("optuna_samplers").values()}


def make_sampler(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """Build the Optuna sampler registered as ``name`` (e.g. ``"tpe"``, ``"nsga2"``)."""
    return _lookup("optuna_samplers", name).obj(seed=seed, **kwargs)


def layer_types() -> list[Any]:
    """Every registered :class:`~panther.tuner.layers.base.LayerType`, built-ins first."""
    return [e.obj for e in _registry("layer_types").values()]


def get_layer_type(name: str) -> Any:
    """The layer type called ``name`` (case-insensitive, e.g. ``"Linear"``)."""
    return _lookup("layer_types", name).obj


def layer_type_for(module: Any) -> Any | None:
    """The layer type that handles ``module``, or ``None`` when no plugin can sketch it.

    Among several handlers the highest-ranked plugin wins (hand-registered >
    installed > built-in); two handlers of equal rank raise :class:`PluginConflictError`.
    """
    handlers = []
    for entry in _registry("layer_types").values():
        try:
            if entry.obj.handles(module):
                handlers.append(entry)
        except Exception as exc:
            _warn(
                f"{_label(entry)} layer type {entry.name!r} raised in handles(): {exc!r}; skipped"
            )
    if not handlers:
        return None
    top = max(e.origin.rank for e in handlers)
    best = [e for e in handlers if e.origin.rank == top]
    if len(best) > 1:
        raise PluginConflictError(
            f"{type(module).__name__} is handled by several layer types: "
            + ", ".join(f"{e.name!r} from {_label(e)}" for e in best)
            + "; unregister one, or register the preferred one by hand with register_plugin()"
        )
    return best[0].obj


def evaluators() -> dict[str, Callable[..., Any]]:
    """``{name: factory(**options) -> (model -> float)}`` from every plugin."""
    return {e.name: e.obj for e in _registry("evaluators").values()}


def get_evaluator(name: str, **options: Any) -> Callable[..., float]:
    """Build the evaluator registered as ``name`` with ``options``."""
    return _lookup("evaluators", name).obj(**options)


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with its distribution, version and contributions.

    ``contributes`` lists, per kind, the names the plugin offers (including names
    that lost a conflict) and, under ``"events"``, the lifecycle hooks it implements.
    """
    pm = get_plugin_manager()
    contributions: dict[str, dict[str, list[str]]] = {}
    for kind in _KINDS:
        for entry in _collect(kind):
            contributions.setdefault(entry.plugin_name, {}).setdefault(kind, []).append(entry.name)
    for hook_name in (
        "panther_trial_finished",
        "panther_layer_finished",
        "panther_tuning_finished",
    ):
        for impl in _impls(pm, hook_name):
            contributions.setdefault(impl.plugin_name, {}).setdefault("events", []).append(
                hook_name
            )
    infos = []
    for name, _plugin in pm.list_name_plugin():
        origin = _origin(name)
        infos.append(
            PluginInfo(
                name=name,
                distribution=origin.distribution,
                version=origin.version,
                builtin=origin.rank == _RANK_BUILTIN,
                contributes=contributions.get(name, {}),
            )
        )
    infos.sort(key=lambda i: (not i.builtin, i.name))
    return infos
