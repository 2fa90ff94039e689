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
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import importlib
import importlib.metadata as importlib_metadata
import importlib.util
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from panther.tuner import hookspecs

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
DISABLE_ENV = "PANTHER_DISABLE_PLUGINS"
STRICT_ENV = "PANTHER_STRICT_PLUGINS"

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

_BUILTIN, _ENTRY_POINT, _MANUAL = 0, 1, 2
_ORIGIN_LABEL = {_BUILTIN: "built-in", _ENTRY_POINT: "entry point", _MANUAL: "registered in code"}
_PANTHER_DIST = "panther-rnla"
_TRUE = ("1", "true", "yes", "on")


class PluginWarning(UserWarning):
    """A plugin failed to load, does not match the specs, or raised in a hook."""


class PluginError(ValueError):
    """A plugin problem raised instead of warned (strict mode), or a bad plugin selection."""


class PluginConflictError(PluginError):
    """Two plugins claim the same name, and that name was used."""


@dataclass(frozen=True)
class PluginProblem:
    """Something wrong with one plugin, as listed by :func:`problems` and ``panther-tune plugins``.

    Attributes:
        plugin: the plugin (or entry-point) name.
        distribution: the distribution that provides it, when known.
        stage: ``"load"`` (import/instantiation), ``"check"`` (hooks or API version
            do not match the contract), ``"hook"`` (raised or returned a bad value in
            a hook) or ``"selection"`` (a name in the plugin selection matches nothing).
        message: what is wrong and how to fix it.
    """

    plugin: str
    distribution: str | None
    stage: str
    message: str


@dataclass(frozen=True)
class Conflict:
    """One name claimed by several plugins in one registry."""

    registry: str
    name: str
    plugins: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as shown by :func:`list_plugins` and the CLI.

    Attributes:
        name: the plugin's name (entry-point name, or module name for built-ins).
        distribution, version: the installed distribution providing it, if any.
        builtin: whether it ships with panther.
        contributes: registry (hook name without ``panther_``) -> names it offers,
            including names in conflict; ``"events"`` -> the other hooks it implements.
        origin: ``"built-in"``, ``"entry point"`` or ``"registered in code"``.
    """

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    contributes: dict[str, list[str]] = field(default_factory=dict)
    origin: str = "registered in code"


@dataclass
class _Origin:
    rank: int
    distribution: str | None = None
    version: str | None = None
    module: ModuleType | None = None


@dataclass
class Contribution:
    """One named object a plugin contributes to a registry, and who contributed it."""

    name: str
    obj: Any
    plugin: str
    origin: _Origin


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
_origins: dict[str, _Origin] = {}
_problems: dict[tuple[str, str, str], PluginProblem] = {}
_cache: dict[str, Contributions] = {}
_cache_key: tuple[Any, ...] | None = None
_overrides: dict[str, Any] = {"only": (), "disable": (), "strict": None}
_warned: dict[Any, Any] = {}
_guarded = False
_call_log: contextvars.ContextVar[list[tuple[str, Any]] | None] = contextvars.ContextVar(
    "panther_hook_log", default=None
)


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
    global _pm, _selection, _cache_key, _guarded
    with _lock:
        _pm = _selection = _cache_key = None
        _guarded = False
        _origins.clear()
        _problems.clear()
        _cache.clear()
        _warned.clear()


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
        dist, version = _distribution_of(module)
        chosen = name or pm.get_canonical_name(obj)
        strict = _selection.strict if strict is None else strict
        return _register(pm, obj, chosen, _Origin(_MANUAL, dist, version, module), strict)


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
        for key in [k for k in _problems if k[0] == name]:
            del _problems[key]
        _invalidate()
        return plugin


def _invalidate() -> None:
    global _cache_key, _guarded
    _cache.clear()
    _cache_key, _guarded = None, False


def _panther_distribution() -> tuple[str, str | None]:
    try:
        return _PANTHER_DIST, importlib_metadata.version(_PANTHER_DIST)
    except importlib_metadata.PackageNotFoundError:  # a source tree that is not pip-installed
        return _PANTHER_DIST, getattr(importlib.import_module("panther"), "__version__", None)


def _load_builtins(pm: _Manager, sel: _Selection) -> None:
    dist, version = _panther_distribution()
    for module_name in BUILTIN_PLUGINS:
        if module_name in sel.disable:
            continue
        origin = _Origin(_BUILTIN, dist, version)
        try:
            origin.module = importlib.import_module(module_name)
        except Exception as exc:  # a broken built-in must not take the host down
            _report(module_name, origin, "load", f"failed to import: {type(exc).__name__}: {exc}",
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
        origin = _Origin(_ENTRY_POINT, dist, version)
        existing = _origins.get(ep.name)
        if pm.get_plugin(ep.name) is not None:
            if existing is None or existing.distribution != dist:
                _report(ep.name, origin, "load",
                        f"was not loaded: the plugin name {ep.name!r} is already taken", sel.strict)
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            _report(ep.name, origin, "load", f"failed to import ({ep.value}): "
                    f"{type(exc).__name__}: {exc}; it is skipped", sel.strict,
                    where=ep.value.split(":")[0])
            continue
        origin.module = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
        if pm.is_registered(obj):
            _report(ep.name, origin, "load", "points at an object already registered as "
                    f"{pm.get_name(obj)!r}; skipped", sel.strict)
            continue
        _register(pm, obj, ep.name, origin, sel.strict)
    for name in sorted(named - matched - set(BUILTIN_PLUGINS)):
        variable = ONLY_ENV if sel.only and name in sel.only else DISABLE_ENV
        installed = sorted({ep.name for ep in _iter_entry_points()})
        _report(name, _Origin(_ENTRY_POINT), "selection",
                f"is named in {variable} (or --plugin/--no-plugin) but no installed plugin or "
                f"distribution has that name; installed plugins: {installed}", sel.strict)


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


def _describe(plugin: str, origin: _Origin) -> str:
    dist = origin.distribution
    where = (f"distribution {dist!r}" + (f" {origin.version}" if origin.version else "")
             if dist else "no distribution")
    return f"panther plugin {plugin!r} ({where})"


def _origin(plugin: str) -> _Origin:
    # Plugins registered directly on the pluggy manager count as registered by hand.
    return _origins.get(plugin) or _Origin(_MANUAL)


def _warn_at(message: str, module: ModuleType | str | None, func: Any = None) -> None:
    """Warn with the location of the plugin's own code, not the host's."""
    code = getattr(inspect.unwrap(func), "__code__", None) if func is not None else None
    if code is not None:
        filename, lineno, modname = code.co_filename, code.co_firstlineno, func.__module__
    else:
        modname = module if isinstance(module, str) or module is None else module.__name__
        filename, lineno = getattr(module, "__file__", None), 1
        if isinstance(module, str):
            try:
                spec = importlib.util.find_spec(module)
                filename = spec.origin if spec is not None else None
            except (ImportError, ValueError):
                filename = None
    if not filename:
        warnings.warn(message, PluginWarning, stacklevel=3)
    else:
        warnings.warn_explicit(message, PluginWarning, filename, lineno, module=modname,
                               registry=_warned)


def _report(plugin: str, origin: _Origin, stage: str, message: str, strict: bool = False, *,
            func: Any = None, where: str | None = None) -> None:
    """Record a problem of ``plugin``; warn about it, or raise in strict mode."""
    text = f"{_describe(plugin, origin)} {message}"
    if strict:
        raise PluginError(f"{text} [strict mode: {STRICT_ENV} or --check]")
    key = (plugin, stage, message)
    if key not in _problems:
        _problems[key] = PluginProblem(plugin, origin.distribution, stage, text)
    _warn_at(text, where or origin.module, func)


# --------------------------------------------------------------------------- registration


def _spec_names(pm: pluggy.PluginManager) -> list[str]:
    return [n for n, c in vars(pm.hook).items() if isinstance(c, pluggy.HookCaller) and c.has_spec()]


def _closest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _required_args(func: Any) -> list[str]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is p.empty]


def _check_hooks(pm: _Manager, plugin: Any) -> list[tuple[str, str, Any]]:
    """``(attribute, problem, function)`` for every implementation that fails the specs."""
    specs = _spec_names(pm)
    found = []
    for attr in dir(plugin):
        opts = pluggy.PluginManager.parse_hookimpl_opts(pm, plugin, attr)
        if opts is None and not attr.startswith("panther_"):
            continue
        func = getattr(plugin, attr, None)
        if opts is None:
            if callable(func):
                found.append((attr, f"has a function {attr!r} that is not marked @hookimpl, so "
                              f"it is ignored{_closest(attr, specs)}; decorate it with "
                              "panther.tuner.hookimpl", func))
            continue
        hook_name = opts.get("specname") or attr
        caller = getattr(pm.hook, hook_name, None)
        if caller is None or not caller.has_spec():
            found.append((attr, f"implements {hook_name!r}, which is not a panther hook"
                          f"{_closest(hook_name, specs)} (hooks: {sorted(specs)}); it is ignored",
                          func))
            continue
        if opts.get("wrapper") or opts.get("hookwrapper"):
            continue
        extra = [a for a in _required_args(func) if a not in caller.spec.argnames]
        if extra:
            close = [c for a in extra for c in difflib.get_close_matches(a, caller.spec.argnames, 1)]
            hint = f"; did you mean {close}?" if close else ""
            found.append((attr, f"hook {hook_name!r} asks for argument(s) {extra}, which the spec "
                          f"does not offer (it offers {list(caller.spec.argnames)}){hint}; "
                          "the implementation is ignored", func))
    return found


def _api_problem(plugin: Any) -> str | None:
    declared = getattr(plugin, "PANTHER_PLUGIN_API", None)
    if declared is None:
        return None
    versions = set(declared) if isinstance(declared, (list, tuple, set, frozenset)) else {declared}
    if hookspecs.PLUGIN_API in versions:
        return None
    return (f"declares PANTHER_PLUGIN_API = {declared!r}, but this panther provides plugin API "
            f"{hookspecs.PLUGIN_API}; install a release of the plugin written for API "
            f"{hookspecs.PLUGIN_API}, or a panther that provides API {declared!r}")


def _register(pm: _Manager, obj: Any, name: str, origin: _Origin, strict: bool) -> str:
    """Check ``obj`` against the specs, register what passes, and guard its hooks."""
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            message = (f"is a class that could not be instantiated without arguments "
                       f"({type(exc).__name__}: {exc}); point the entry point at a module or "
                       "an instance, or give the class a no-argument constructor")
            if origin.rank == _MANUAL:
                raise PluginError(f"{_describe(name, origin)} {message}") from exc
            _report(name, origin, "load", message, strict)
            return name
    for source in getattr(obj, "PANTHER_HOOKSPECS", ()):
        if id(source) not in pm.spec_sources:
            try:
                pm.add_hookspecs(source)
            except ValueError as exc:  # no specs in it, or a hook name another spec owns
                _report(name, origin, "check", f"declares PANTHER_HOOKSPECS {source!r} that "
                        f"cannot be added: {exc}", strict)
                continue
            pm.spec_sources.add(id(source))
    found = _check_hooks(pm, obj)
    api = _api_problem(obj)
    if api is not None:
        _report(name, origin, "check", api, strict)
    for _attr, problem, func in found:
        _report(name, origin, "check", problem, strict, func=func)
    pm.skip = {attr for attr, _problem, _func in found}
    try:
        registered = pm.register(obj, name=name)
    except pluggy.PluginValidationError as exc:  # a case the checks above do not cover
        raise PluginError(f"{_describe(name, origin)} does not match the panther hook specs: "
                          f"{exc}") from exc
    finally:
        pm.skip = set()
    if registered is None:
        raise PluginError(f"plugin name {name!r} is blocked; pick another name")
    _origins[registered] = origin
    _guard_all(pm)
    _invalidate()
    return registered


# --------------------------------------------------------------------------- hook calls


def _guard(impl: Any, hook_name: str) -> None:
    """Make one implementation report its exceptions instead of aborting the hook call."""
    func = impl.function
    plugin = impl.plugin_name

    @functools.wraps(func)
    def guarded(*args: Any) -> Any:
        try:
            result = func(*args)
        except Exception as exc:
            _report(plugin, _origin(plugin), "hook", f"raised in {hook_name}: "
                    f"{type(exc).__name__}: {exc}; its contribution is ignored", func=func)
            return None
        log = _call_log.get()
        if log is not None and result is not None:
            log.append((plugin, result))
        return result

    guarded.panther_guarded = True  # type: ignore[attr-defined]
    impl.function = guarded


def _guard_all(pm: pluggy.PluginManager) -> None:
    """Guard every implementation not guarded yet (also plugins registered on ``pm`` directly).

    The walk runs again only after the plugin set changed (:func:`_invalidate`, or a
    registry noticing a plugin registered on the manager directly): ``emit`` runs per trial.
    """
    global _guarded
    if _guarded:
        return
    _guarded = True
    for hook_name, caller in vars(pm.hook).items():
        if isinstance(caller, pluggy.HookCaller):
            for impl in caller.get_hookimpls():
                if not (impl.wrapper or impl.hookwrapper) and not getattr(
                    impl.function, "panther_guarded", False
                ):
                    _guard(impl, hook_name)


def _caller(pm: pluggy.PluginManager, hook_name: str) -> pluggy.HookCaller:
    caller = getattr(pm.hook, hook_name, None)
    if caller is None or not caller.has_spec():
        raise ValueError(f"unknown panther hook {hook_name!r}{_closest(hook_name, _spec_names(pm))}; "
                         f"hooks are {sorted(_spec_names(pm))}")
    return caller


def _call(hook_name: str, attribute: bool = True, /, **kwargs: Any) -> list[tuple[str | None, Any]]:
    """Call a hook through pluggy; return ``(plugin name, result)`` pairs in call order.

    A result is attributed to the implementation that returned that very object; a
    result a wrapper built anew is attributed per item to the implementation that
    returned the item, else to the wrapper (see :func:`_owner`).
    """
    pm = get_plugin_manager()
    caller = _caller(pm, hook_name)
    _guard_all(pm)
    log: list[tuple[str, Any]] | None = [] if attribute else None
    token = _call_log.set(log)
    try:
        try:
            results = caller(**kwargs)
        except Exception as exc:  # only a wrapper can raise: implementations are guarded
            wrappers = [i for i in caller.get_hookimpls() if i.wrapper or i.hookwrapper]
            if not wrappers:
                raise
            for impl in wrappers:
                _report(impl.plugin_name, _origin(impl.plugin_name), "hook",
                        f"hook wrapper of {hook_name} raised {type(exc).__name__}: {exc}; "
                        "the hook was called again without the wrappers", func=impl.function)
            if log is not None:
                log.clear()
            results = pm.subset_hook_caller(hook_name, [i.plugin for i in wrappers])(**kwargs)
    finally:
        _call_log.reset(token)
    if log is None:
        return [(None, r) for r in results]
    owners = {id(value): plugin for plugin, value in reversed(log)}
    wrappers = sorted({i.plugin_name for i in caller.get_hookimpls() if i.wrapper or i.hookwrapper})
    return [(owners.get(id(r)) or _owner(r, log, wrappers), r) for r in results]


def _owner(result: Any, log: list[tuple[str, Any]], wrappers: list[str]) -> str | None:
    """Who made a result that no implementation returned as is (a wrapper rebuilt it)."""
    items = list(result.values()) if isinstance(result, dict) else result
    if isinstance(items, (list, tuple)) and items:
        for plugin, value in log:
            given = value.values() if isinstance(value, dict) else value
            if isinstance(given, (list, tuple, type({}.values()))) and all(
                any(x is y for y in given) for x in items
            ):
                return plugin
    return wrappers[0] if len(wrappers) == 1 else None


def emit(hook_name: str, **kwargs: Any) -> list[Any]:
    """Call the hook ``hook_name`` on every plugin; return the non-``None`` results.

    A plugin that raises produces a :class:`PluginWarning` naming it; the others are
    still called. Hook wrappers wrap the call as pluggy documents.

    Raises:
        ValueError: if ``hook_name`` is not a panther hook.
    """
    return [result for _plugin, result in _call(hook_name, attribute=False, **kwargs)]


# --------------------------------------------------------------------------- registries


class Contributions(Mapping[str, Any]):
    """The named contributions of one registry hook.

    Iterating gives every name, ambiguous ones included, so "unknown name" errors
    never hide a conflict. ``registry[name]`` and :meth:`lookup` compare names as
    the hook's spec says (layer types exactly, other names case-insensitively) and
    raise :class:`PluginConflictError` for an ambiguous name; :meth:`items` and
    :meth:`values` skip ambiguous names.
    """

    def __init__(self, hook: str, spec: hookspecs.Registry, entries: dict[str, Contribution],
                 clashes: dict[str, list[Contribution]]) -> None:
        self.hook, self.spec = hook, spec
        self._entries, self._clashes = entries, clashes

    def _key(self, name: str) -> str:
        if not isinstance(name, str):
            raise TypeError(f"{self.spec.what} names are strings, got {type(name).__name__}")
        return name if self.spec.case_sensitive else name.lower()

    def __iter__(self) -> Iterator[str]:
        yield from (e.name for e in self._entries.values())
        yield from (claims[0].name for claims in self._clashes.values())

    def __len__(self) -> int:
        return len(self._entries) + len(self._clashes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self._key(name) in self._entries
                                          or self._key(name) in self._clashes)

    def __getitem__(self, name: str) -> Any:
        return self.entry(name, KeyError).obj

    def items(self) -> Any:  # type: ignore[override]
        """``(name, object)`` of the unambiguous names."""
        return [(e.name, e.obj) for e in self._entries.values()]

    def values(self) -> Any:  # type: ignore[override]
        """The objects of the unambiguous names."""
        return [e.obj for e in self._entries.values()]

    def lookup(self, name: str) -> Any:
        """The object registered as ``name``; ``ValueError`` naming the choices if unknown."""
        return self.entry(name, ValueError).obj

    def plugin_of(self, name: str) -> str:
        """The name of the plugin that contributes ``name``."""
        return self.entry(name, ValueError).plugin

    def entry(self, name: str, missing: type[Exception] = ValueError) -> Contribution:
        """The :class:`Contribution` behind ``name``; ``missing`` is raised for an unknown name."""
        key = self._key(name)
        if key in self._clashes:
            raise PluginConflictError(self._clash_message(key))
        entry = self._entries.get(key)
        if entry is None:
            known = sorted(self)
            near = [n for n in known if n.lower() == name.lower()]
            hint = f" (names are case-sensitive: did you mean {near[0]!r}?)" if near else ""
            note = selection_note()
            raise missing(
                f"unknown {self.spec.what} {name!r}{hint}; available: {known}. Install a plugin "
                "that provides it or register one with register_plugin()"
                + (f"; {note}" if note else "")
            )
        return entry

    def conflicts(self) -> list[Conflict]:
        """Every ambiguous name of this registry."""
        return [Conflict(self.spec.what, claims[0].name, tuple(e.plugin for e in claims),
                         self._clash_message(key)) for key, claims in self._clashes.items()]

    def claims(self) -> list[Contribution]:
        """Every contribution: the unambiguous ones, then every claim of an ambiguous name."""
        return [*self._entries.values(), *(e for c in self._clashes.values() for e in c)]

    def _clash_message(self, key: str) -> str:
        claims = self._clashes[key]
        who = " and ".join(f"{_describe(e.plugin, e.origin)} [{_ORIGIN_LABEL[e.origin.rank]}]"
                           for e in claims)
        others = [e.plugin for e in claims if e.origin.rank != _BUILTIN] or [claims[-1].plugin]
        disable = " or ".join(f"{DISABLE_ENV}={p} (panther-tune --no-plugin {p})" for p in others)
        return (f"the {self.spec.what} name {claims[0].name!r} is claimed by {who}. Pick one: "
                f"disable the other with {disable}, uninstall it, or register the one you want "
                "with register_plugin() (hand-registered plugins take precedence)")


def _registry_spec(pm: pluggy.PluginManager, hook_name: str) -> hookspecs.Registry | None:
    return getattr(_caller(pm, hook_name).spec.function, "panther_registry", None)


def _contributed(hook_name: str, spec: hookspecs.Registry) -> list[Contribution]:
    entries: list[Contribution] = []
    for plugin, result in _call(hook_name):
        owner = plugin or "(a hook wrapper)"
        origin = _origin(owner)
        if spec.by_attribute is not None:
            items = list(result.values()) if isinstance(result, dict) else result
            ok = isinstance(items, (list, tuple))
            pairs = [(getattr(o, spec.by_attribute, None), o) for o in items] if ok else []
        else:
            ok = isinstance(result, dict)
            pairs = list(result.items()) if ok else []
        if not ok:
            expected = "a list" if spec.by_attribute else "a dict"
            _report(owner, origin, "hook", f"{hook_name} must return {expected}, got "
                    f"{type(result).__name__}; ignored")
        for name, obj in pairs:
            problem = spec.check(obj) if spec.check is not None else None
            if problem is None and (not isinstance(name, str) or not name):
                problem = f"names must be non-empty strings, got {name!r}"
            if problem is not None:
                _report(owner, origin, "hook", f"{hook_name}: entry {name!r} {problem}; ignored")
                continue
            entries.append(Contribution(name, obj, owner, origin))
    order = {n: i for i, (n, _p) in enumerate(get_plugin_manager().list_name_plugin())}
    entries.sort(key=lambda e: order.get(e.plugin, len(order)))
    return entries


def _resolve(spec: hookspecs.Registry, hook: str, entries: list[Contribution]) -> Contributions:
    groups: dict[str, list[Contribution]] = {}
    for entry in entries:
        key = entry.name if spec.case_sensitive else entry.name.lower()
        claims = groups.setdefault(key, [])
        if any(e.plugin == entry.plugin for e in claims):
            _report(entry.plugin, entry.origin, "hook",
                    f"contributes the {spec.what} name {entry.name!r} twice; the first is used")
            continue
        claims.append(entry)
    chosen: dict[str, Contribution] = {}
    clashes: dict[str, list[Contribution]] = {}
    for key, claims in groups.items():
        top = max(e.origin.rank for e in claims)
        best = [e for e in claims if e.origin.rank == top]
        if len(claims) == 1:
            chosen[key] = claims[0]
        elif len(best) == 1 and top == _MANUAL:
            for low in claims:
                if low is not best[0]:
                    _warn_at(f"{spec.what} {best[0].name!r} from {_describe(best[0].plugin, best[0].origin)}"
                             f" overrides the one from {_describe(low.plugin, low.origin)} "
                             "(hand-registered plugins take precedence)", best[0].origin.module)
            chosen[key] = best[0]
        else:
            clashes[key] = claims
    return Contributions(hook, spec, chosen, clashes)


def registry(hook_name: str) -> Contributions:
    """The contributions of the registry hook ``hook_name`` (cached until plugins change).

    Raises:
        ValueError: ``hook_name`` is unknown or not a registry hook.
    """
    global _cache_key
    pm = get_plugin_manager()
    with _lock:
        key = tuple((n, id(p)) for n, p in pm.list_name_plugin())
        if key != _cache_key:
            _invalidate()
            _cache_key = key
        if hook_name not in _cache:
            spec = _registry_spec(pm, hook_name)
            if spec is None:
                raise ValueError(f"{hook_name} is not a registry hook")
            _cache[hook_name] = _resolve(spec, hook_name, _contributed(hook_name, spec))
        return _cache[hook_name]


def _registry_hooks(pm: pluggy.PluginManager) -> list[str]:
    return [n for n in _spec_names(pm) if _registry_spec(pm, n) is not None]


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
    reg = registry("panther_layer_types")
    handlers = []
    for entry in reg.claims():
        try:
            if entry.obj.handles(module):
                handlers.append(entry)
        except Exception as exc:
            _report(entry.plugin, entry.origin, "hook", f"layer type {entry.name!r} raised in "
                    f"handles(): {type(exc).__name__}: {exc}; skipped", func=entry.obj.handles)
    if not handlers:
        return None
    top = max(e.origin.rank for e in handlers)
    best = [e for e in handlers if e.origin.rank == top]
    if len(best) > 1:
        raise PluginConflictError(
            f"{type(module).__name__} is handled by several layer types: "
            + ", ".join(f"{e.name!r} from {_describe(e.plugin, e.origin)}" for e in best)
            + f"; disable one ({DISABLE_ENV} / --no-plugin), unregister it, or register the "
            "preferred one by hand with register_plugin()"
        )
    return reg.entry(best[0].name).obj


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
    for hook in _registry_hooks(pm):
        registry(hook)
    return list(_problems.values())


def conflicts() -> list[Conflict]:
    """Every ambiguous name in every registry."""
    pm = get_plugin_manager()
    return [c for hook in _registry_hooks(pm) for c in registry(hook).conflicts()]


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with its distribution, version and contributions.

    ``contributes`` maps each registry (the hook name without ``panther_``) to the
    names the plugin offers, including names in conflict, and ``"events"`` to the
    other hooks it implements.
    """
    pm = get_plugin_manager()
    contributions: dict[str, dict[str, list[str]]] = {}
    registries = set(_registry_hooks(pm))
    for hook in sorted(registries):
        for entry in registry(hook).claims():
            per = contributions.setdefault(entry.plugin, {})
            per.setdefault(hook.removeprefix("panther_"), []).append(entry.name)
    for hook in sorted(set(_spec_names(pm)) - registries):
        for impl in _caller(pm, hook).get_hookimpls():
            contributions.setdefault(impl.plugin_name, {}).setdefault("events", []).append(hook)
    infos = []
    for name, _plugin in pm.list_name_plugin():
        origin = _origin(name)
        infos.append(PluginInfo(name, origin.distribution, origin.version, origin.rank == _BUILTIN,
                                contributions.get(name, {}), _ORIGIN_LABEL[origin.rank]))
    infos.sort(key=lambda i: (not i.builtin, i.name))
    return infos

