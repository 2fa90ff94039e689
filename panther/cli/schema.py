"""The ``tune`` config schema: its keys, and the checks that pin every mistake to a key.

Everything here raises :class:`~panther.cli.errors.ConfigError` naming the file, the
offending key and a fix, so that a typo never surfaces as a traceback from deep inside
the tuner. Nothing here imports user code (that is :mod:`panther.cli.build`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panther.cli.errors import ConfigError

__all__ = [
    "LAYER_KEYS",
    "PARAM_SPEC_KEYS",
    "SEARCH_KEYS",
    "THRESHOLD_KEYS",
    "TOP_KEYS",
    "check_keys",
    "expect",
    "find_name",
    "parse_param_space",
    "suggest",
    "type_name",
]

#: Top-level keys of a ``tune`` config and what each holds (used in "add ..." fixes).
TOP_KEYS = {
    "model": "the model factory, 'package.module:function' (required)",
    "model_kwargs": "keyword arguments for the model factory (table)",
    "accuracy": "'module:function' or {evaluator = NAME, ...} (required)",
    "speed": "'module:function' or {evaluator = NAME, ...} to maximise",
    "threshold": "minimum accuracy: a number, {drop = x} or {relative = x}",
    "num_runs_per_param": "evaluations per parameter set, best kept (int)",
    "layers": "[[layers]] tables (required)",
    "search": "[search] table",
    "output": "output folder (the --output option wins)",
    "verbose": "print the tuner's own log (bool)",
}
#: Keys of one ``[[layers]]`` table.
LAYER_KEYS = ("selector", "params", "separate", "copy_weights")
#: Keys of the ``[search]`` table.
SEARCH_KEYS = ("backend", "sampler", "n_trials", "seed", "storage", "study_name", "load_if_exists",
               "options")
#: The table forms of ``threshold`` (a bare number is an absolute minimum).
THRESHOLD_KEYS = ("drop", "relative")
#: Keys of each parameter-space table, by its ``type``.
PARAM_SPEC_KEYS = {
    "int": ("type", "low", "high", "step", "log"),
    "float": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices"),
}


def suggest(word: str, choices: Sequence[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def check_keys(path: Path, prefix: str, table: dict[str, Any], allowed: Sequence[str]) -> None:
    """Reject the first key of ``table`` not in ``allowed``, with a "did you mean"."""
    for key in table:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                path,
                where,
                f"unknown key '{key}'",
                f"{suggest(key, allowed)}allowed keys here are: {', '.join(allowed)}",
            )


def find_name(path: Path, key: str, what: str, name: str, registry: Any) -> str:
    """The registered spelling of ``name`` in a plugin ``registry``, or a ConfigError at ``key``.

    Names are matched by the host's own rule (:meth:`panther.tuner.plugins.Contributions.spelling`).
    """
    found = registry.spelling(name)
    if found is not None:
        return found
    from panther.tuner.plugins import selection_note

    available = list(registry)
    note = selection_note()  # autoload off or a plugin selection may hide the one meant
    raise ConfigError(
        path, key, f"no {what} named '{name}'",
        f"{suggest(name, available)}installed: {', '.join(sorted(available)) or 'none'} "
        "(`panther-tune plugins` lists them)" + (f"; {note}" if note else ""),
    )


def type_name(value: Any) -> str:
    """What TOML calls the type of ``value`` (table, array, string, boolean, ...)."""
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def expect(path: Path, key: str, value: Any, types: tuple[type, ...], what: str) -> None:
    """Raise a ConfigError at ``key`` unless ``value`` is one of ``types`` (bool only if listed)."""
    # bool is an int subclass; a stray `true` where a count belongs is a mistake.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ConfigError(path, key, f"expected {what}, got {type_name(value)} {value!r}", f"write {what}")


def parse_param_space(path: Path, key: str, value: Any) -> Any:
    """``"auto"`` or ``{name: ParamSpec}`` from a ``params`` value of a ``[[layers]]`` table."""
    from panther.tuner.config import Categorical, Float, Int

    if value == "auto":
        return "auto"
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            path, key, f"expected \"auto\" or a table of parameter spaces, got {value!r}",
            f'write {key} = "auto" or {key} = {{low_rank = [16, 32, 64], num_terms = [1, 2]}}',
        )
    space: dict[str, Any] = {}
    for name, spec in value.items():
        pkey = f"{key}.{name}"
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(path, pkey, "empty list of values", "list at least one value")
            try:
                space[name] = Categorical(spec)
            except (TypeError, ValueError) as exc:
                raise ConfigError(path, pkey, str(exc), "list distinct values") from exc
            continue
        if not isinstance(spec, dict):
            raise ConfigError(
                path, pkey, f"expected a list of values or a table, got {type_name(spec)} {spec!r}",
                f"write {name} = [8, 16, 32] or {name} = {{type = \"int\", low = 8, high = 64, step = 8}}",
            )
        kind = spec.get("type")
        if kind not in PARAM_SPEC_KEYS:
            raise ConfigError(
                path, f"{pkey}.type", f"unknown parameter space type {kind!r}",
                f"{suggest(str(kind), list(PARAM_SPEC_KEYS))}use type = \"int\", \"float\" or \"categorical\"",
            )
        check_keys(path, pkey, spec, PARAM_SPEC_KEYS[kind])
        try:
            if kind == "categorical":
                space[name] = Categorical(spec.get("choices", []))
            else:
                missing = [k for k in ("low", "high") if k not in spec]
                if missing:
                    raise ConfigError(path, f"{pkey}.{missing[0]}", f"{kind} space needs '{missing[0]}'",
                                      f"add {missing[0]} = <number>")
                cls = Int if kind == "int" else Float
                kwargs = {k: spec[k] for k in ("low", "high", "step", "log") if k in spec}
                space[name] = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, pkey, str(exc), "fix the bounds/step of this space") from exc
    return space
