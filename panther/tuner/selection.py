"""Turn a layer selector (``LayerConfig.layer_names``) into module names.

A selector is one of:

* an exact module name (``"encoder.layers.0.linear1"``);
* a regular expression, used when the string is not an exact name; it must match
  the *whole* name (``re.fullmatch``), so ``"fc"`` does not select ``"fc2"``;
* a list of selectors: the union of what each selects (every element must select
  something, so a typo in one element is reported instead of silently ignored);
* a dict whose keys all have to hold (logical AND):

  ``pattern``
      a regex or a list of regexes (any of them, full match);
  ``type``
      a name, a class object, or a list of them (any). A plain name matches a
      module whose class is named exactly that *or* whose layer type (the plugin
      that sketches it) is named exactly that -- one naming rule, case-sensitive
      like Python class names, so ``"Conv1D"`` (transformers) never selects
      ``nn.Conv1d``; :func:`type_matches` says which of the two matched.
      Matching is by *exact* type: ``"Linear"`` does not select subclasses such
      as ``NonDynamicallyQuantizableLinear`` (the ``out_proj`` of
      ``nn.MultiheadAttention``, which that module reads directly and must not
      be replaced), and the built-in ``Linear`` layer type does not handle them
      either. A dotted name (``"torch.nn.Linear"``) must match the class's full
      import path; a class object matches that class only;
  ``contains``
      a substring or a list of substrings (any);
  ``indices``
      a list of ints (negative ones count from the end) picking positions in the
      sorted list of modules matched by the other keys;
  ``range``
      ``[start, end]`` or ``[start, end, step]``, Python slice semantics over the
      same sorted list (``end`` exclusive, negatives and ``None`` allowed).

  ``indices`` and ``range`` together keep the positions both pick.

The root module (name ``""``) is never selected. Results are deduplicated and
sorted in *natural* order: digit runs compare as numbers, so ``"layers.2"`` comes
before ``"layers.10"``; ``indices`` and ``range`` count in that order too.

Errors are ``ValueError``/``TypeError`` that name the selector and, when nothing
matched, list the closest layer names (and for ``type``, the layer types in the
model). Suggestions favour modules of the requested ``type``, then modules that
hold parameters; pure containers (``Sequential``, ``ModuleList``, blocks) are never
suggested and parameter-free leaves (``ReLU``) only when nothing better is close.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

__all__ = ["select_layers", "natural_key", "natural_sorted", "type_matches", "SELECTOR_KEYS"]

#: How a ``type`` name matched a module (values of :func:`type_matches`).
BY_CLASS, BY_LAYER_TYPE, BY_BOTH = "class name", "layer-type name", "class name and layer-type name"

SELECTOR_KEYS: tuple[str, ...] = ("pattern", "type", "contains", "indices", "range")
_POSITION_KEYS = ("indices", "range")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs numerically (``"a.2"`` < ``"a.10"``).

    ``re.split`` with a capturing group alternates text and digit chunks, so the
    chunks at one position always have the same kind and compare cleanly. The
    name itself breaks ties such as ``"a01"`` vs ``"a1"``.
    """
    parts = _DIGITS.split(name)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Deduplicate ``names`` and sort them in natural order."""
    return sorted(set(names), key=natural_key)


def select_layers(model: nn.Module, selector: Any) -> list[str]:
    """Return the names of the modules of ``model`` that ``selector`` picks.

    Args:
        model: the model whose ``named_modules()`` are searched (root excluded).
        selector: an exact name, a regex (string or compiled), a list of
            selectors, or a dict of ``pattern``/``type``/``contains``/
            ``indices``/``range`` (see the module docs).

    Returns:
        The selected names, deduplicated, in natural sort order.

    Raises:
        ValueError: the selector matches nothing (the message lists close names),
            has unknown keys, an invalid regex, or out-of-range indices.
        TypeError: the selector or one of its values has the wrong type.

    Example::

        select_layers(model, {"pattern": r"encoder\\.layers\\.[0-5]\\..*", "type": "Linear"})
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"select_layers needs an nn.Module, got {type(model).__name__}")
    modules = {name: m for name, m in model.named_modules() if name}
    names = natural_sorted(modules)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no submodules, so selector {selector!r} cannot match anything"
        )
    return natural_sorted(_select(model, modules, names, selector))


def _select(model: nn.Module, modules: dict[str, nn.Module], names: list[str], selector: Any) -> list[str]:
    if isinstance(selector, str):
        return _select_string(model, modules, names, selector)
    if isinstance(selector, re.Pattern):
        found = [n for n in names if selector.fullmatch(n)]
        if not found:
            raise _no_match(model, modules, names, selector, [selector.pattern])
        return found
    if isinstance(selector, dict):
        return _select_dict(model, modules, names, selector)
    if isinstance(selector, (list, tuple)):
        if not selector:
            raise ValueError("layer selector is an empty list; give at least one name, regex or dict")
        found: list[str] = []
        for item in selector:
            if isinstance(item, (list, tuple)):
                raise TypeError(
                    f"layer selector list {selector!r} contains a nested list {item!r}; "
                    "flatten it (a list is already a union)"
                )
            found.extend(_select(model, modules, names, item))
        return found
    raise TypeError(
        "layer selector must be a module name, a regex, a list of them, or a dict with keys "
        f"{list(SELECTOR_KEYS)}; got {type(selector).__name__} {selector!r}"
    )


def _select_string(model: nn.Module, modules: dict[str, nn.Module], names: list[str], selector: str) -> list[str]:
    if not selector:
        raise ValueError("layer selector is an empty string; give a module name or a regex")
    # An exact name wins over its reading as a regex: "fc.1" must not also pick "fcx1".
    if selector in modules:
        return [selector]
    regex = _compile(selector, selector)
    found = [n for n in names if regex.fullmatch(n)]
    if not found:
        raise _no_match(model, modules, names, selector, [selector])
    return found


def _compile(pattern: str | re.Pattern[str], selector: Any) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"layer selector {selector!r}: patterns must be strings, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"layer selector {selector!r}: {pattern!r} is neither a module name nor a valid "
            f"regular expression ({err}); escape literal characters, e.g. with re.escape()"
        ) from None


def _as_list(value: Any, key: str, selector: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if not items:
            raise ValueError(f"layer selector {selector!r}: {key!r} is an empty list")
        return items
    return [value]


def _layer_type_name(module: nn.Module) -> str | None:
    """The name of the layer type that would sketch ``module``, if any."""
    from panther.tuner import plugins  # lazy: the host loads plugins on first use

    try:
        layer_type = plugins.layer_type_for(module)
    except plugins.PluginConflictError:
        # An ambiguous handler is reported when the layer is tuned; the class name
        # still selects it.
        return None
    return None if layer_type is None else layer_type.name


def _how_matched(spec: Any, module: nn.Module) -> str | None:
    """How one ``type`` entry matches ``module`` (:data:`BY_CLASS`, ...), or ``None``."""
    cls = type(module)
    if isinstance(spec, type):
        return BY_CLASS if cls is spec else None
    if "." in spec:
        full = f"{cls.__module__}.{cls.__qualname__}"
        return BY_CLASS if spec in (full, _public_path(cls)) else None
    by_class = cls.__name__ == spec
    by_type = _layer_type_name(module) == spec
    if by_class and by_type:
        return BY_BOTH
    return BY_CLASS if by_class else BY_LAYER_TYPE if by_type else None


def _type_matcher(spec: Any, selector: Any):
    """Return a predicate on modules for one ``type`` entry (name string or class)."""
    if isinstance(spec, type) or (isinstance(spec, str) and spec):
        return lambda module: _how_matched(spec, module) is not None
    raise TypeError(
        f"layer selector {selector!r}: 'type' entries must be class names, layer-type names "
        f"or classes, got {spec!r}"
    )


def type_matches(model: nn.Module, spec: Any) -> dict[str, str]:
    """Which modules of ``model`` a ``{"type": spec}`` entry selects, and how.

    Returns:
        ``{module name: how}`` in natural order, where ``how`` is ``"class name"``,
        ``"layer-type name"`` or ``"class name and layer-type name"``.

    Example::

        type_matches(gpt2, "Conv1D")   # {"h.0.attn.c_attn": "class name and layer-type name", ...}
    """
    _type_matcher(spec, {"type": spec})  # same validation as selectors
    found = {}
    for name, module in model.named_modules():
        how = _how_matched(spec, module) if name else None
        if how is not None:
            found[name] = how
    return {n: found[n] for n in natural_sorted(found)}


def _public_path(cls: type) -> str:
    # torch classes live in private modules (torch.nn.modules.linear); accept the
    # path users actually write, torch.nn.<Name>, when it resolves to the same class.
    if cls.__module__.startswith("torch.nn.modules") and getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return ""


def _select_dict(model: nn.Module, modules: dict[str, nn.Module], names: list[str], selector: dict) -> list[str]:
    if not selector:
        raise ValueError(f"layer selector dict is empty; use one or more of the keys {list(SELECTOR_KEYS)}")
    unknown = [k for k in selector if k not in SELECTOR_KEYS]
    if unknown:
        raise ValueError(
            f"layer selector {selector!r} has unknown key(s) {unknown}; valid keys are {list(SELECTOR_KEYS)}"
        )
    candidates = names
    counts: dict[str, int] = {}
    queries: list[str] = []

    if "pattern" in selector:
        patterns = [_compile(p, selector) for p in _as_list(selector["pattern"], "pattern", selector)]
        queries.extend(p.pattern for p in patterns)
        hits = [n for n in names if any(p.fullmatch(n) for p in patterns)]
        counts["pattern"] = len(hits)
        hit_set = set(hits)
        candidates = [n for n in candidates if n in hit_set]

    if "type" in selector:
        matchers = [_type_matcher(t, selector) for t in _as_list(selector["type"], "type", selector)]
        hits = [n for n in names if any(f(modules[n]) for f in matchers)]
        counts["type"] = len(hits)
        hit_set = set(hits)
        candidates = [n for n in candidates if n in hit_set]

    if "contains" in selector:
        subs = _as_list(selector["contains"], "contains", selector)
        for s in subs:
            if not isinstance(s, str) or not s:
                raise TypeError(
                    f"layer selector {selector!r}: 'contains' entries must be non-empty strings, got {s!r}"
                )
        queries.extend(subs)
        hits = [n for n in names if any(s in n for s in subs)]
        counts["contains"] = len(hits)
        hit_set = set(hits)
        candidates = [n for n in candidates if n in hit_set]

    has_filters = any(k in selector for k in ("pattern", "type", "contains"))
    if has_filters and not candidates:
        raise _no_match(model, modules, names, selector, queries, counts)

    if any(k in selector for k in _POSITION_KEYS):
        n_before = len(candidates)
        positions = set(range(n_before))
        if "indices" in selector:
            positions &= _indices_positions(selector["indices"], candidates, selector)
        if "range" in selector:
            positions &= _range_positions(selector["range"], len(candidates), selector)
        candidates = [candidates[i] for i in sorted(positions)]
        if not candidates:
            raise ValueError(
                f"layer selector {selector!r}: 'indices'/'range' picked no layer out of the "
                f"{n_before} candidate(s); check the positions (they count over the sorted "
                "matches of the other keys)"
            )
    return candidates


def _check_int(value: Any, what: str, selector: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"layer selector {selector!r}: {what} must be an int, got {value!r}")
    return value


def _indices_positions(raw: Any, candidates: Sequence[str], selector: Any) -> set[int]:
    indices = _as_list(raw, "indices", selector)
    n = len(candidates)
    out: set[int] = set()
    for i in indices:
        i = _check_int(i, "'indices' entries", selector)
        if not -n <= i < n:
            raise ValueError(
                f"layer selector {selector!r}: index {i} is out of range for the {n} matched "
                f"layer(s) {_preview(candidates)}; valid indices are {-n}..{n - 1}"
            )
        out.add(i % n)
    return out


def _range_positions(raw: Any, n: int, selector: Any) -> set[int]:
    if not isinstance(raw, (list, tuple)) or len(raw) not in (2, 3):
        raise ValueError(
            f"layer selector {selector!r}: 'range' must be [start, end] or [start, end, step], got {raw!r}"
        )
    bounds = [None if v is None else _check_int(v, "'range' bounds", selector) for v in raw]
    if len(bounds) == 3 and bounds[2] == 0:
        raise ValueError(f"layer selector {selector!r}: 'range' step must not be 0")
    return set(range(n)[slice(*bounds)])


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = list(names[:limit])
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{shown}{more}"


def _is_container(module: nn.Module) -> bool:
    """A module that only groups others (``Sequential``, ``ModuleList``, a block)."""
    return next(module.children(), None) is not None and next(module.parameters(recurse=False), None) is None


def _suggestion_tiers(modules: dict[str, nn.Module], selector: Any) -> dict[str, int]:
    """Rank the names worth suggesting: lower is better; pure containers are left out.

    0: modules of the requested ``type`` (when it names one present in the model),
    otherwise modules holding parameters (what can be sketched); 1: modules with
    parameters when a type ranks first; 2: parameter-free leaves such as ``ReLU``.
    A container is only kept when it is of the requested type.
    """
    wanted = None
    if isinstance(selector, dict) and "type" in selector:
        try:
            matchers = [_type_matcher(t, selector) for t in _as_list(selector["type"], "type", selector)]
        except (TypeError, ValueError):
            matchers = []
        if any(f(m) for m in modules.values() for f in matchers):
            wanted = matchers
    tiers: dict[str, int] = {}
    for name, module in modules.items():
        if wanted is not None and any(f(module) for f in wanted):
            tiers[name] = 0
        elif _is_container(module):
            continue
        elif next(module.parameters(recurse=False), None) is not None:
            tiers[name] = 0 if wanted is None else 1
        else:
            tiers[name] = 2
    return tiers


def _close_names(queries: list[str], tiers: dict[str, int], limit: int = 5, cutoff: float = 0.5) -> list[str]:
    """Names similar to any query, preferred tiers first, then by similarity.

    Parameter-free leaves (tier 2) are only offered when nothing better is close.
    """
    scored: list[tuple[int, float, tuple[Any, ...], str]] = []
    matchers = [difflib.SequenceMatcher(b=q, autojunk=False) for q in queries]
    for name, tier in tiers.items():
        best = 0.0
        for sm in matchers:
            sm.set_seq1(name)
            # the cheap upper bounds first, as difflib.get_close_matches does
            if sm.real_quick_ratio() >= cutoff and sm.quick_ratio() >= cutoff:
                best = max(best, sm.ratio())
        if best >= cutoff:
            scored.append((tier, -best, natural_key(name), name))
    scored.sort()
    if scored and scored[0][0] < 2:
        scored = [entry for entry in scored if entry[0] < 2]
    return [name for *_, name in scored[:limit]]


def _no_match(
    model: nn.Module,
    modules: dict[str, nn.Module],
    names: list[str],
    selector: Any,
    queries: list[str],
    counts: dict[str, int] | None = None,
) -> ValueError:
    parts = [f"layer selector {selector!r} matched no module of {type(model).__name__}"]
    if counts and len(counts) > 1 and all(c > 0 for c in counts.values()):
        detail = ", ".join(f"{k!r} alone matches {c}" for k, c in counts.items())
        parts.append(f"each key matches on its own ({detail}) but no module matches all of them")
    tiers = _suggestion_tiers(modules, selector)
    close = _close_names(queries, tiers)
    if close:
        parts.append(f"close layer names: {close}")
    elif queries or not (isinstance(selector, dict) and "type" in selector):
        # for a type-only selector the list of types below is the useful hint
        ranked = [n for n in tiers if tiers[n] < 2] or list(tiers) or names
        ranked.sort(key=lambda n: (tiers.get(n, 0), natural_key(n)))
        parts.append(f"layer names include: {_preview(ranked, limit=6)}")
    if isinstance(selector, dict) and "type" in selector:
        present = sorted({type(m).__name__ for m in modules.values()})
        classes = sorted({type(m).__name__ for m in modules.values() if not _is_container(m)})
        sketchable = sorted({t for t in map(_layer_type_name, modules.values()) if t})
        known = sorted(set(present) | set(sketchable))
        wanted = [t for t in _as_list(selector["type"], "type", selector) if isinstance(t, str)]
        guesses = [
            g for t in wanted for g in difflib.get_close_matches(t.split(".")[-1], known, n=3)
        ]
        guesses += [k for t in wanted for k in known if k.lower() == t.lower() and k != t]
        if guesses and not set(guesses) & {t.split(".")[-1] for t in wanted}:
            parts.append(
                f"did you mean type {sorted(set(guesses))}? (class and layer-type names are "
                "case-sensitive)"
            )
        # containers cannot be sketched; listing them only lengthens the message
        parts.append(f"classes in the model: {classes or present}")
        if sketchable:
            parts.append(f"layer types that can sketch its modules: {sketchable}")
    parts.append("use ModelVisualizer.print_module_tree(model) to see all names")
    return ValueError("; ".join(parts))
