"""Registries built from the results of the plugin host's registry hooks.

Part of the plugin host (:mod:`panther.tuner.plugins`, which holds the manager and
the public functions). Each registry hook (``panther_search_algorithms``,
``panther_layer_types``, ...) is a namespace: this module collects every plugin's
named contributions, checks them against the hook's :class:`~panther.tuner.hookspecs.Registry`
spec, resolves clashes per name (one clash makes only that name ambiguous; a
plugin registered by hand overrides built-in and installed ones, with a warning)
and lists plugins, problems and conflicts for reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from panther.tuner import hook_calls, hookspecs
from panther.tuner.plugin_checks import (
    BUILTIN,
    MANUAL,
    ORIGIN_LABEL,
    Origin,
    PluginConflictError,
    describe,
    origin_of,
    report,
    spec_names,
    warn_at,
)

#: The variable that disables plugins, named in conflict messages.
DISABLE_ENV = "PANTHER_DISABLE_PLUGINS"

_cache: dict[str, Contributions] = {}
_cache_key: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Conflict:
    """One name claimed by several plugins in one registry."""

    registry: str
    name: str
    plugins: tuple[str, ...]
    message: str


@dataclass
class Contribution:
    """One named object a plugin contributes to a registry, and who contributed it."""

    name: str
    obj: Any
    plugin: str
    origin: Origin


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


class Contributions(Mapping[str, Any]):
    """The named contributions of one registry hook.

    Iterating gives every name, ambiguous ones included, so "unknown name" errors
    never hide a conflict. ``registry[name]`` and :meth:`lookup` compare names as
    the hook's spec says (layer types exactly, other names case-insensitively) and
    raise :class:`PluginConflictError` for an ambiguous name; :meth:`items` and
    :meth:`values` skip ambiguous names.
    """

    def __init__(self, hook: str, spec: hookspecs.Registry, entries: dict[str, Contribution],
                 clashes: dict[str, list[Contribution]],
                 note: Callable[[], str] = lambda: "") -> None:
        self.hook, self.spec = hook, spec
        self._entries, self._clashes = entries, clashes
        self._note = note  # why an installed plugin may be missing, for "unknown name" errors

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

    def spelling(self, name: str) -> str | None:
        """How ``name`` is registered, compared as the spec says (ambiguous names too), or ``None``.

        For callers that report an unknown name their own way (the CLI pins it to a config key).
        """
        key = self._key(name)
        found = self._entries.get(key) or next(iter(self._clashes.get(key, ())), None)
        return None if found is None else found.name

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
            note = self._note()
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
        who = " and ".join(f"{describe(e.plugin, e.origin)} [{ORIGIN_LABEL[e.origin.rank]}]"
                           for e in claims)
        others = [e.plugin for e in claims if e.origin.rank != BUILTIN] or [claims[-1].plugin]
        disable = " or ".join(f"{DISABLE_ENV}={p} (panther-tune --no-plugin {p})" for p in others)
        return (f"the {self.spec.what} name {claims[0].name!r} is claimed by {who}. Pick one: "
                f"disable the other with {disable}, uninstall it, or register the one you want "
                "with register_plugin() (hand-registered plugins take precedence)")


def invalidate() -> None:
    """The plugin set changed: rebuild registries (and re-guard hooks) on next use."""
    global _cache_key
    _cache.clear()
    _cache_key = None
    hook_calls.invalidate()


def registry_spec(pm: pluggy.PluginManager, hook_name: str) -> hookspecs.Registry | None:
    """The :class:`~panther.tuner.hookspecs.Registry` spec of ``hook_name``, or ``None``."""
    return getattr(hook_calls.caller(pm, hook_name).spec.function, "panther_registry", None)


def registry_hooks(pm: pluggy.PluginManager) -> list[str]:
    """The names of every registry hook on ``pm``."""
    return [n for n in spec_names(pm) if registry_spec(pm, n) is not None]


def _contributed(pm: pluggy.PluginManager, hook_name: str,
                 spec: hookspecs.Registry) -> list[Contribution]:
    entries: list[Contribution] = []
    for plugin, result in hook_calls.call(pm, hook_name):
        owner = plugin or "(a hook wrapper)"
        origin = origin_of(owner)
        if spec.by_attribute is not None:
            items = list(result.values()) if isinstance(result, dict) else result
            ok = isinstance(items, (list, tuple))
            pairs = [(getattr(o, spec.by_attribute, None), o) for o in items] if ok else []
        else:
            ok = isinstance(result, dict)
            pairs = list(result.items()) if ok else []
        if not ok:
            expected = "a list" if spec.by_attribute else "a dict"
            report(owner, origin, "hook", f"{hook_name} must return {expected}, got "
                   f"{type(result).__name__}; ignored")
        for name, obj in pairs:
            problem = spec.check(obj) if spec.check is not None else None
            if problem is None and (not isinstance(name, str) or not name):
                problem = f"names must be non-empty strings, got {name!r}"
            if problem is not None:
                report(owner, origin, "hook", f"{hook_name}: entry {name!r} {problem}; ignored")
                continue
            entries.append(Contribution(name, obj, owner, origin))
    order = {n: i for i, (n, _p) in enumerate(pm.list_name_plugin())}
    entries.sort(key=lambda e: order.get(e.plugin, len(order)))
    return entries


def _resolve(spec: hookspecs.Registry, hook: str, entries: list[Contribution],
             note: Callable[[], str]) -> Contributions:
    groups: dict[str, list[Contribution]] = {}
    for entry in entries:
        key = entry.name if spec.case_sensitive else entry.name.lower()
        claims = groups.setdefault(key, [])
        if any(e.plugin == entry.plugin for e in claims):
            report(entry.plugin, entry.origin, "hook",
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
        elif len(best) == 1 and top == MANUAL:
            for low in claims:
                if low is not best[0]:
                    warn_at(f"{spec.what} {best[0].name!r} from {describe(best[0].plugin, best[0].origin)}"
                            f" overrides the one from {describe(low.plugin, low.origin)} "
                            "(hand-registered plugins take precedence)", best[0].origin.module)
            chosen[key] = best[0]
        else:
            clashes[key] = claims
    return Contributions(hook, spec, chosen, clashes, note)


def registry(pm: pluggy.PluginManager, hook_name: str,
             note: Callable[[], str] = lambda: "") -> Contributions:
    """The contributions of the registry hook ``hook_name`` on ``pm`` (cached until plugins change).

    ``note`` says why an installed plugin may be missing; "unknown name" errors add it.

    Raises:
        ValueError: ``hook_name`` is unknown or not a registry hook.
    """
    global _cache_key
    key = tuple((n, id(p)) for n, p in pm.list_name_plugin())
    if key != _cache_key:  # also catches plugins registered on the pluggy manager directly
        invalidate()
        _cache_key = key
    if hook_name not in _cache:
        spec = registry_spec(pm, hook_name)
        if spec is None:
            raise ValueError(f"{hook_name} is not a registry hook")
        _cache[hook_name] = _resolve(spec, hook_name, _contributed(pm, hook_name, spec), note)
    return _cache[hook_name]


def handler_of(reg: Contributions, module: Any) -> Any | None:
    """The object of the highest-ranked layer type in ``reg`` that handles ``module``, or ``None``.

    Raises:
        PluginConflictError: two handlers of equal rank, or a winner whose name is ambiguous.
    """
    handlers = []
    for entry in reg.claims():
        try:
            if entry.obj.handles(module):
                handlers.append(entry)
        except Exception as exc:
            report(entry.plugin, entry.origin, "hook", f"layer type {entry.name!r} raised in "
                   f"handles(): {type(exc).__name__}: {exc}; skipped", func=entry.obj.handles)
    if not handlers:
        return None
    top = max(e.origin.rank for e in handlers)
    best = [e for e in handlers if e.origin.rank == top]
    if len(best) > 1:
        raise PluginConflictError(
            f"{type(module).__name__} is handled by several layer types: "
            + ", ".join(f"{e.name!r} from {describe(e.plugin, e.origin)}" for e in best)
            + f"; disable one ({DISABLE_ENV} / --no-plugin), unregister it, or register the "
            "preferred one by hand with register_plugin()"
        )
    return reg.entry(best[0].name).obj


def plugin_infos(pm: pluggy.PluginManager,
                 registry_of: Callable[[str], Contributions]) -> list[PluginInfo]:
    """A :class:`PluginInfo` per plugin on ``pm``, built-ins first; ``registry_of(hook)`` gives a registry."""
    contributions: dict[str, dict[str, list[str]]] = {}
    registries = set(registry_hooks(pm))
    for hook in sorted(registries):
        for entry in registry_of(hook).claims():
            per = contributions.setdefault(entry.plugin, {})
            per.setdefault(hook.removeprefix("panther_"), []).append(entry.name)
    for hook in sorted(set(spec_names(pm)) - registries):
        for impl in hook_calls.caller(pm, hook).get_hookimpls():
            contributions.setdefault(impl.plugin_name, {}).setdefault("events", []).append(hook)
    infos = []
    for name, _plugin in pm.list_name_plugin():
        origin = origin_of(name)
        infos.append(PluginInfo(name, origin.distribution, origin.version, origin.rank == BUILTIN,
                                contributions.get(name, {}), ORIGIN_LABEL[origin.rank]))
    infos.sort(key=lambda i: (not i.builtin, i.name))
    return infos
