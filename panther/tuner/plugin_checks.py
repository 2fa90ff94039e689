"""What the plugin host knows about each plugin, and how it judges one.

The lower half of :mod:`panther.tuner.plugins`: the plugin errors and warnings,
where each plugin came from (:class:`Origin`), the problem log behind
:func:`panther.tuner.plugins.problems` with its strict mode (raise instead of
warn), and the checks a plugin passes before it is registered: hook names, hook
arguments and the declared ``PANTHER_PLUGIN_API``. Nothing here holds the manager.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as importlib_metadata
import importlib.util
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from panther.tuner import hookspecs

STRICT_ENV = "PANTHER_STRICT_PLUGINS"

#: Ranks of where a plugin came from; a higher rank wins a name (see ``registries``).
BUILTIN, ENTRY_POINT, MANUAL = 0, 1, 2
ORIGIN_LABEL = {BUILTIN: "built-in", ENTRY_POINT: "entry point", MANUAL: "registered in code"}
_PANTHER_DIST = "panther-rnla"


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


@dataclass
class Origin:
    """Where a registered plugin came from: its rank, distribution and module."""

    rank: int
    distribution: str | None = None
    version: str | None = None
    module: ModuleType | None = None


#: plugin name -> its origin, filled by the host as it registers plugins.
origins: dict[str, Origin] = {}
#: every problem seen since the manager was built, keyed so each is listed once.
problem_log: dict[tuple[str, str, str], PluginProblem] = {}
_warned: dict[Any, Any] = {}


def forget(plugin: str | None = None) -> None:
    """Drop what is known about ``plugin`` (``None``: about every plugin)."""
    if plugin is None:
        origins.clear()
        problem_log.clear()
        _warned.clear()
        return
    origins.pop(plugin, None)
    for key in [k for k in problem_log if k[0] == plugin]:
        del problem_log[key]


def origin_of(plugin: str) -> Origin:
    """The origin of ``plugin``; plugins registered on the pluggy manager directly count as by hand."""
    return origins.get(plugin) or Origin(MANUAL)


def panther_distribution() -> tuple[str, str | None]:
    """panther's own distribution name and version (the built-ins' distribution)."""
    try:
        return _PANTHER_DIST, importlib_metadata.version(_PANTHER_DIST)
    except importlib_metadata.PackageNotFoundError:  # a source tree that is not pip-installed
        return _PANTHER_DIST, getattr(importlib.import_module("panther"), "__version__", None)


def distribution_of(module: ModuleType | None) -> tuple[str | None, str | None]:
    """The installed distribution (name, version) that provides ``module``, when known."""
    if module is None:
        return None, None
    top = module.__name__.split(".")[0]
    if top == "panther":
        return panther_distribution()
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


def describe(plugin: str, origin: Origin) -> str:
    """``panther plugin 'x' (distribution 'd' 1.0)``: how messages name a plugin."""
    dist = origin.distribution
    where = (f"distribution {dist!r}" + (f" {origin.version}" if origin.version else "")
             if dist else "no distribution")
    return f"panther plugin {plugin!r} ({where})"


def warn_at(message: str, module: ModuleType | str | None, func: Any = None) -> None:
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


def report(plugin: str, origin: Origin, stage: str, message: str, strict: bool = False, *,
           func: Any = None, where: str | None = None) -> None:
    """Record a problem of ``plugin``; warn about it, or raise in strict mode."""
    text = f"{describe(plugin, origin)} {message}"
    if strict:
        raise PluginError(f"{text} [strict mode: {STRICT_ENV} or --check]")
    key = (plugin, stage, message)
    if key not in problem_log:
        problem_log[key] = PluginProblem(plugin, origin.distribution, stage, text)
    warn_at(text, where or origin.module, func)


def spec_names(pm: pluggy.PluginManager) -> list[str]:
    """The names of every hook with a spec on ``pm``."""
    return [n for n, c in vars(pm.hook).items() if isinstance(c, pluggy.HookCaller) and c.has_spec()]


def closest(name: str, names: Sequence[str]) -> str:
    """A ``; did you mean 'x'?`` hint for a misspelt name, or ``""``."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _required_args(func: Any) -> list[str]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is p.empty]


def check_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[tuple[str, str, Any]]:
    """``(attribute, problem, function)`` for every implementation that fails the specs."""
    specs = spec_names(pm)
    found = []
    for attr in dir(plugin):
        opts = pluggy.PluginManager.parse_hookimpl_opts(pm, plugin, attr)
        if opts is None and not attr.startswith("panther_"):
            continue
        func = getattr(plugin, attr, None)
        if opts is None:
            if callable(func):
                found.append((attr, f"has a function {attr!r} that is not marked @hookimpl, so "
                              f"it is ignored{closest(attr, specs)}; decorate it with "
                              "panther.tuner.hookimpl", func))
            continue
        hook_name = opts.get("specname") or attr
        caller = getattr(pm.hook, hook_name, None)
        if caller is None or not caller.has_spec():
            found.append((attr, f"implements {hook_name!r}, which is not a panther hook"
                          f"{closest(hook_name, specs)} (hooks: {sorted(specs)}); it is ignored",
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


def api_problem(plugin: Any) -> str | None:
    """Why the plugin's declared ``PANTHER_PLUGIN_API`` does not fit this panther, or ``None``."""
    declared = getattr(plugin, "PANTHER_PLUGIN_API", None)
    if declared is None:
        return None
    versions = set(declared) if isinstance(declared, (list, tuple, set, frozenset)) else {declared}
    if hookspecs.PLUGIN_API in versions:
        return None
    return (f"declares PANTHER_PLUGIN_API = {declared!r}, but this panther provides plugin API "
            f"{hookspecs.PLUGIN_API}; install a release of the plugin written for API "
            f"{hookspecs.PLUGIN_API}, or a panther that provides API {declared!r}")
