"""The plugin host: finds, checks, registers and queries panther plugins.

Everything the tuner can use arrives through the hooks of
:mod:`panther.tuner.hookspecs`, called with pluggy's own caller (so hook
wrappers, ``tryfirst``/``trylast`` and ``specname`` work as pluggy documents).
The built-ins are ordinary plugins registered first; installed packages are
found through the ``panther`` entry-point group. docs/plugins.md is the guide.

Which plugins load (read when the manager is built; :func:`configure` adds the
CLI's ``--plugin``/``--no-plugin``):

* ``PANTHER_PLUGINS=a,b`` -- only these installed plugins (entry-point or
  distribution names), plus the built-ins; they load even with autoload off.
* ``PANTHER_DISABLE_PLUGINS=a,b`` -- skip these (built-in module names too).
* ``PANTHER_DISABLE_PLUGIN_AUTOLOAD=1`` -- no entry-point discovery.
* ``PANTHER_STRICT_PLUGINS=1`` -- plugin problems found while loading or
  registering (unknown hooks or hook arguments, API mismatch, import errors)
  raise :class:`PluginError` instead of warning.

Failure isolation: a plugin that fails to load, or raises inside a hook, is
reported with a :class:`PluginWarning` pointing at the plugin's own code and kept
in :func:`problems`; every other plugin keeps working.

Names: each registry hook is a namespace. A clash on one name makes only that
name ambiguous (:func:`conflicts`; using it raises :class:`PluginConflictError`),
except that a plugin registered by hand with :func:`register_plugin` overrides a
built-in or installed one, with a warning naming both.

The host is this module (manager, selection, loading, registration and the public
functions); :mod:`panther.tuner.plugin_checks` judges plugins and keeps the problem
log, :mod:`panther.tuner.hook_calls` calls hooks with failures isolated, and
:mod:`panther.tuner.registries` builds the named registries and the reports.
"""

from __future__ import annotations

import importlib
import importlib.metadata as importlib_metadata
import inspect
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from panther.tuner import hook_calls, hookspecs, plugin_checks, registries
from panther.tuner.plugin_checks import (
    BUILTIN,
    ENTRY_POINT,
    MANUAL,
    STRICT_ENV,
    Origin,
    PluginConflictError,
    PluginError,
    PluginProblem,
    PluginWarning,
    api_problem,
    check_hooks,
    describe,
    distribution_of,
    panther_distribution,
    report,
)
from panther.tuner.registries import DISABLE_ENV, Conflict, Contribution, Contributions, PluginInfo

__all__ = [
    "AUTOLOAD_ENV", "BUILTIN_PLUGINS", "DISABLE_ENV", "ENTRY_POINT_GROUP", "ONLY_ENV", "STRICT_ENV",
    "Conflict", "Contribution", "Contributions", "PluginConflictError", "PluginError", "PluginInfo", "PluginProblem",
    "PluginWarning", "configure", "conflicts", "emit", "evaluators", "get_evaluator",
    "get_layer_type", "get_plugin_manager", "get_search_algorithm", "layer_type_for", "layer_types",
    "list_plugins", "make_sampler", "optuna_samplers", "problems", "register_plugin", "registry",
    "reset_plugin_manager", "search_algorithms", "selection_note", "unregister_plugin",
]

ENTRY_POINT_GROUP = "panther"
AUTOLOAD_ENV = "PANTHER_DISABLE_PLUGIN_AUTOLOAD"
ONLY_ENV = "PANTHER_PLUGINS"

#: Modules registered as built-in plugins, in this order.
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

_TRUE = ("1", "true", "yes", "on")


@dataclass
class _Selection:
    only: tuple[str, ...] | None
    disable: tuple[str, ...]
    autoload: bool
    strict: bool


class _Manager(pluggy.PluginManager):
    """pluggy's manager, told by the host which implementations failed the checks."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.skip: set[str] = set()
        self.spec_sources: set[int] = set()

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if name in self.skip:
            return None
        return super().parse_hookimpl_opts(plugin, name)


_lock = threading.RLock()
_pm: _Manager | None = None
_selection: _Selection | None = None
_overrides: dict[str, Any] = {"only": (), "disable": (), "strict": None}


# --------------------------------------------------------------------------- selection


def _env_names(var: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in os.environ.get(var, "").split(",") if n.strip())


def _current_selection() -> _Selection:
    only = _env_names(ONLY_ENV) + tuple(_overrides["only"])
    strict = _overrides["strict"]
    return _Selection(
        only=only or None,
        disable=_env_names(DISABLE_ENV) + tuple(_overrides["disable"]),
        autoload=os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in _TRUE,
        strict=os.environ.get(STRICT_ENV, "").strip().lower() in _TRUE if strict is None else strict,
    )


def configure(
    only: Sequence[str] = (), disable: Sequence[str] = (), strict: bool | None = None
) -> None:
    """Select plugins for this process on top of the environment, and rebuild the manager.

    Args:
        only: load only these installed plugins (added to ``PANTHER_PLUGINS``).
        disable: never load these (added to ``PANTHER_DISABLE_PLUGINS``).
        strict: raise :class:`PluginError` for plugin problems (``None``: ``PANTHER_STRICT_PLUGINS``).

    ``configure()`` with no arguments restores the environment's selection. A change
    rebuilds the manager (plugins registered in code must be registered again).
    """
    wanted = {"only": tuple(only), "disable": tuple(disable), "strict": strict}
    with _lock:
        if wanted != _overrides:  # unchanged: keep the manager (and plugins registered in code)
            _overrides.update(wanted)
            reset_plugin_manager()


def selection_note() -> str:
    """Why an installed plugin may be missing (autoload off, a selection), or ``""``."""
    sel = _selection or _current_selection()
    notes = []
    if not sel.autoload:
        notes.append(
            f"plugin autoload is off ({AUTOLOAD_ENV}=1), so installed plugins are not loaded: "
            f"unset it, or name the plugin in {ONLY_ENV} (panther-tune --plugin NAME)"
        )
    if sel.only:
        notes.append(f"only the plugins {list(sel.only)} are loaded ({ONLY_ENV} / --plugin)")
    if sel.disable:
        notes.append(f"disabled plugins: {list(sel.disable)} ({DISABLE_ENV} / --no-plugin)")
    return "; ".join(notes)



# --------------------------------------------------------------------------- manager


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use.

    Raises:
        PluginError: in strict mode, when a built-in or installed plugin has a problem.
    """
    global _pm, _selection
    with _lock:
        if _pm is None:
            pm = _Manager()
            pm.add_hookspecs(hookspecs)
            _pm, _selection = pm, _current_selection()
            try:
                _load_builtins(pm, _selection)
                _load_entry_points(pm, _selection)
            except PluginError:
                reset_plugin_manager()
                raise
        return _pm


def reset_plugin_manager() -> None:
    """Forget the manager, registries and problems; the next use re-reads the environment."""
    global _pm, _selection
    with _lock:
        _pm = _selection = None
        plugin_checks.forget()
        registries.invalidate()


def register_plugin(obj: Any, name: str | None = None, *, strict: bool | None = None) -> str:
    """Register a plugin in code: a module, a class (instantiated with no arguments) or an object.

    Hand-registered plugins take precedence over built-in and installed ones that
    contribute the same name (with a :class:`PluginWarning`). Every hook
    implementation is checked against the specs first.

    Args:
        obj: the plugin.
        name: its name (default: pluggy's canonical name of the object).
        strict: raise instead of warning about implementations that do not match
            the specs (``None``: the process setting, ``PANTHER_STRICT_PLUGINS``).

    Returns:
        The name the plugin was registered under.

    Raises:
        ValueError: the object or the name is already registered.
        PluginError: in strict mode, the plugin does not match the contract.
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
        module = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
        dist, version = distribution_of(module)
        chosen = name or pm.get_canonical_name(obj)
        strict = _selection.strict if strict is None else strict
        return _register(pm, obj, chosen, Origin(MANUAL, dist, version, module), strict)


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
        plugin_checks.forget(name)
        registries.invalidate()
        return plugin


def _load_builtins(pm: _Manager, sel: _Selection) -> None:
    dist, version = panther_distribution()
    for module_name in BUILTIN_PLUGINS:
        if module_name in sel.disable:
            continue
        origin = Origin(BUILTIN, dist, version)
        try:
            origin.module = importlib.import_module(module_name)
        except Exception as exc:  # a broken built-in must not take the host down
            report(module_name, origin, "load", f"failed to import: {type(exc).__name__}: {exc}",
                   strict=sel.strict)
            continue
        _register(pm, origin.module, module_name, origin, sel.strict)


def _iter_entry_points() -> list[importlib_metadata.EntryPoint]:
    # The same distribution can be visible twice (an editable install plus a source
    # tree on sys.path); one registration per (name, value) is enough.
    seen: set[tuple[str, str]] = set()
    result = []
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            result.append(ep)
    return result


def _load_entry_points(pm: _Manager, sel: _Selection) -> None:
    """Register the selected ``panther`` entry points one by one, isolating broken ones."""
    named = set(sel.only or ()) | set(sel.disable)
    matched: set[str] = set()
    for ep in _iter_entry_points():
        dist = getattr(ep.dist, "name", None) if ep.dist is not None else None
        version = getattr(ep.dist, "version", None) if ep.dist is not None else None
        matched |= {ep.name, dist} & named
        if ep.name in sel.disable or dist in sel.disable:
            continue
        if sel.only is not None:
            if ep.name not in sel.only and dist not in sel.only:
                continue
        elif not sel.autoload:
            continue
        origin = Origin(ENTRY_POINT, dist, version)
        existing = plugin_checks.origins.get(ep.name)
        if pm.get_plugin(ep.name) is not None:
            if existing is None or existing.distribution != dist:
                report(ep.name, origin, "load",
                       f"was not loaded: the plugin name {ep.name!r} is already taken", sel.strict)
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            report(ep.name, origin, "load", f"failed to import ({ep.value}): "
                   f"{type(exc).__name__}: {exc}; it is skipped", sel.strict,
                   where=ep.value.split(":")[0])
            continue
        origin.module = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
        if pm.is_registered(obj):
            report(ep.name, origin, "load", "points at an object already registered as "
                   f"{pm.get_name(obj)!r}; skipped", sel.strict)
            continue
        _register(pm, obj, ep.name, origin, sel.strict)
    for name in sorted(named - matched - set(BUILTIN_PLUGINS)):
        variable = ONLY_ENV if sel.only and name in sel.only else DISABLE_ENV
        installed = sorted({ep.name for ep in _iter_entry_points()})
        report(name, Origin(ENTRY_POINT), "selection",
               f"is named in {variable} (or --plugin/--no-plugin) but no installed plugin or "
               f"distribution has that name; installed plugins: {installed}", sel.strict)


def _register(pm: _Manager, obj: Any, name: str, origin: Origin, strict: bool) -> str:
    """Check ``obj`` against the specs, register what passes, and guard its hooks."""
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            message = (f"is a class that could not be instantiated without arguments "
                       f"({type(exc).__name__}: {exc}); point the entry point at a module or "
                       "an instance, or give the class a no-argument constructor")
            if origin.rank == MANUAL:
                raise PluginError(f"{describe(name, origin)} {message}") from exc
            report(name, origin, "load", message, strict)
            return name
    for source in getattr(obj, "PANTHER_HOOKSPECS", ()):
        if id(source) not in pm.spec_sources:
            try:
                pm.add_hookspecs(source)
            except ValueError as exc:  # no specs in it, or a hook name another spec owns
                report(name, origin, "check", f"declares PANTHER_HOOKSPECS {source!r} that "
                       f"cannot be added: {exc}", strict)
                continue
            pm.spec_sources.add(id(source))
    found = check_hooks(pm, obj)
    api = api_problem(obj)
    if api is not None:
        report(name, origin, "check", api, strict)
    for _attr, problem, func in found:
        report(name, origin, "check", problem, strict, func=func)
    pm.skip = {attr for attr, _problem, _func in found}
    try:
        registered = pm.register(obj, name=name)
    except pluggy.PluginValidationError as exc:  # a case the checks above do not cover
        raise PluginError(f"{describe(name, origin)} does not match the panther hook specs: "
                          f"{exc}") from exc
    finally:
        pm.skip = set()
    if registered is None:
        raise PluginError(f"plugin name {name!r} is blocked; pick another name")
    plugin_checks.origins[registered] = origin
    hook_calls.guard_all(pm)
    registries.invalidate()
    return registered


def emit(hook_name: str, **kwargs: Any) -> list[Any]:
    """Call the hook ``hook_name`` on every plugin; return the non-``None`` results.

    A plugin that raises produces a :class:`PluginWarning` naming it; the others are
    still called. Hook wrappers wrap the call as pluggy documents.

    Raises:
        ValueError: if ``hook_name`` is not a panther hook.
    """
    return [result for _plugin, result in hook_calls.call(get_plugin_manager(), hook_name, False, **kwargs)]


# --------------------------------------------------------------------------- registries


def registry(hook_name: str) -> Contributions:
    """The contributions of the registry hook ``hook_name`` (cached until plugins change).

    Raises:
        ValueError: ``hook_name`` is unknown or not a registry hook.
    """
    pm = get_plugin_manager()
    with _lock:
        return registries.registry(pm, hook_name, selection_note)


def search_algorithms() -> Contributions:
    """``{name: SearchAlgorithm subclass}`` from every plugin (names case-insensitive)."""
    return registry("panther_search_algorithms")


def get_search_algorithm(name: str, **kwargs: Any) -> Any:
    """Instantiate the search algorithm registered as ``name`` with ``kwargs``."""
    return search_algorithms().lookup(name)(**kwargs)


def layer_types() -> list[Any]:
    """Every unambiguous :class:`~panther.tuner.layers.base.LayerType`, built-ins first."""
    return list(registry("panther_layer_types").values())


def get_layer_type(name: str) -> Any:
    """The layer type called exactly ``name`` (e.g. ``"Linear"``)."""
    return registry("panther_layer_types").lookup(name)


def layer_type_for(module: Any) -> Any | None:
    """The layer type that handles ``module``, or ``None`` when no plugin can sketch it.

    Among several handlers the highest-ranked plugin wins (registered in code >
    installed > built-in); two of equal rank, or a winner whose name is ambiguous,
    raise :class:`PluginConflictError`.
    """
    return registries.handler_of(registry("panther_layer_types"), module)


def evaluators() -> Contributions:
    """``{name: factory(**options) -> (model -> float)}`` from every plugin."""
    return registry("panther_evaluators")


def get_evaluator(name: str, **options: Any) -> Callable[..., float]:
    """Build the evaluator registered as ``name`` with ``options``."""
    return evaluators().lookup(name)(**options)


def optuna_samplers() -> Contributions:
    """The Optuna backend's sampler registry (see :mod:`panther.tuner.search.optuna_samplers`)."""
    from panther.tuner.search import optuna_samplers as samplers

    return samplers.samplers()


def make_sampler(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """Build a registered Optuna sampler (:func:`panther.tuner.search.optuna_samplers.make_sampler`)."""
    from panther.tuner.search import optuna_samplers as samplers

    return samplers.make_sampler(name, seed=seed, **kwargs)


# --------------------------------------------------------------------------- reports


def problems() -> list[PluginProblem]:
    """Every plugin problem seen so far (registries are built first so hooks are run)."""
    pm = get_plugin_manager()
    for hook in registries.registry_hooks(pm):
        registry(hook)
    return list(plugin_checks.problem_log.values())


def conflicts() -> list[Conflict]:
    """Every ambiguous name in every registry."""
    pm = get_plugin_manager()
    return [c for hook in registries.registry_hooks(pm) for c in registry(hook).conflicts()]


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with its distribution, version and contributions.

    ``contributes`` maps each registry (the hook name without ``panther_``) to the
    names the plugin offers, including names in conflict, and ``"events"`` to the
    other hooks it implements.
    """
    return registries.plugin_infos(get_plugin_manager(), registry)
