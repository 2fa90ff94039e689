"""Calling panther hooks through pluggy, with each plugin's failures isolated.

Part of the plugin host (:mod:`panther.tuner.plugins`). Every hook
implementation is wrapped once so that an exception in it becomes a reported
problem instead of aborting the call, and so that each result can be attributed
to the plugin that returned it (registries need the owner of every name). Hook
wrappers are left to pluggy; a wrapper that raises is reported and the hook is
called again without wrappers.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import pluggy

from panther.tuner.plugin_checks import closest, origin_of, report, spec_names

_guarded = False
_call_log: contextvars.ContextVar[list[tuple[str, Any]] | None] = contextvars.ContextVar(
    "panther_hook_log", default=None
)


def invalidate() -> None:
    """The plugin set changed: guard the implementations again before the next call."""
    global _guarded
    _guarded = False


def _guard(impl: Any, hook_name: str) -> None:
    """Make one implementation report its exceptions instead of aborting the hook call."""
    func = impl.function
    plugin = impl.plugin_name

    @functools.wraps(func)
    def guarded(*args: Any) -> Any:
        try:
            result = func(*args)
        except Exception as exc:
            report(plugin, origin_of(plugin), "hook", f"raised in {hook_name}: "
                   f"{type(exc).__name__}: {exc}; its contribution is ignored", func=func)
            return None
        log = _call_log.get()
        if log is not None and result is not None:
            log.append((plugin, result))
        return result

    guarded.panther_guarded = True  # type: ignore[attr-defined]
    impl.function = guarded


def guard_all(pm: pluggy.PluginManager) -> None:
    """Guard every implementation not guarded yet (also plugins registered on ``pm`` directly).

    The walk runs again only after the plugin set changed (:func:`invalidate`, or a
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


def caller(pm: pluggy.PluginManager, hook_name: str) -> pluggy.HookCaller:
    """The caller of the panther hook ``hook_name``; ``ValueError`` naming the hooks if unknown."""
    found = getattr(pm.hook, hook_name, None)
    if found is None or not found.has_spec():
        raise ValueError(f"unknown panther hook {hook_name!r}{closest(hook_name, spec_names(pm))}; "
                         f"hooks are {sorted(spec_names(pm))}")
    return found


def call(pm: pluggy.PluginManager, hook_name: str, attribute: bool = True, /,
         **kwargs: Any) -> list[tuple[str | None, Any]]:
    """Call a hook through pluggy; return ``(plugin name, result)`` pairs in call order.

    A result is attributed to the implementation that returned that very object; a
    result a wrapper built anew is attributed per item to the implementation that
    returned the item, else to the wrapper (see :func:`_owner`). With ``attribute``
    false the plugin names are ``None`` (cheaper: nothing is logged).
    """
    hook = caller(pm, hook_name)
    guard_all(pm)
    log: list[tuple[str, Any]] | None = [] if attribute else None
    token = _call_log.set(log)
    try:
        try:
            results = hook(**kwargs)
        except Exception as exc:  # only a wrapper can raise: implementations are guarded
            wrappers = [i for i in hook.get_hookimpls() if i.wrapper or i.hookwrapper]
            if not wrappers:
                raise
            for impl in wrappers:
                report(impl.plugin_name, origin_of(impl.plugin_name), "hook",
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
    wrappers = sorted({i.plugin_name for i in hook.get_hookimpls() if i.wrapper or i.hookwrapper})
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
