"""Build what a ``tune`` config names: user objects, evaluators and the search backend.

Module references (``"package.module:attribute"``) are imported with the config's folder
on the import path only while that import runs (:func:`config_import_path`), so a factory
module can sit next to the config, and a stray file there (``pandas.py``, say) never
shadows an installed package for the rest of the run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from panther.cli.errors import ConfigError
from panther.cli.schema import SEARCH_KEYS, check_keys, expect, find_name, suggest, type_name

__all__ = ["build_function", "build_search", "config_import_path", "import_object"]


@contextlib.contextmanager
def config_import_path(config: Path, module_name: str) -> Iterator[None]:
    """Put ``config``'s folder first on ``sys.path`` while importing ``module_name``, if it is there.

    Only a module whose top-level package lives in the config's folder gets the folder on
    the path (its own sibling imports then work); it is taken off again afterwards, so
    later imports (pandas, matplotlib, plugins) always find the installed packages.
    """
    folder = str(config.resolve().parent)
    top = module_name.split(".")[0]
    local = top not in sys.modules and importlib.machinery.PathFinder.find_spec(top, [folder]) is not None
    added = local and folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def import_object(path: Path, key: str, ref: Any) -> Any:
    """Import ``'package.module:attribute'`` (dots after the colon walk attributes)."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ConfigError(
            path,
            key,
            f"expected a reference 'package.module:function', got {ref!r}",
            "name the module and the object with a colon between them, e.g. "
            "'my_models:build_model'",
        )
    module_name, attr_path = ref.split(":")
    try:
        with config_import_path(path, module_name):
            module = importlib.import_module(module_name)
    except Exception as exc:  # any failure while importing user code is reported
        raise ConfigError(
            path,
            key,
            f"cannot import module '{module_name}' ({type(exc).__name__}: {exc})",
            f"make '{module_name}' importable: install its package, run panther-tune from the "
            f"folder that holds it, or put it next to the config file ({path.resolve().parent}), "
            "which is searched while the config's modules are imported",
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                path,
                key,
                f"'{module_name}' has no attribute '{attr_path}'",
                f"{suggest(part, names)}check the name after the colon in {ref!r}",
            )
        obj = getattr(obj, part)
    return obj


def _resolve_option(path: Path, key: str, value: Any) -> Any:
    """Evaluator options: ``{call = "mod:fn"}`` calls ``fn()``, ``{ref = "mod:obj"}`` imports."""
    if isinstance(value, dict) and set(value) in ({"call"}, {"ref"}):
        (kind, ref), = value.items()
        obj = import_object(path, f"{key}.{kind}", ref)
        if kind == "ref":
            return obj
        try:
            return obj()
        except Exception as exc:  # user code may raise anything
            raise ConfigError(
                path, f"{key}.call", f"calling {ref!r} failed ({type(exc).__name__}: {exc})",
                "make that function callable without arguments",
            ) from exc
    return value


def build_function(
    path: Path, key: str, value: Any, reference_model: Any
) -> Callable[[Any], float]:
    """An accuracy/speed function from ``'mod:fn'`` or ``{evaluator = NAME, ...options}``."""
    if isinstance(value, str):
        fn = import_object(path, key, value)
        if not callable(fn):
            raise ConfigError(path, key, f"{value!r} is not callable",
                              "point it at a function taking the model and returning a float")
        return fn
    if not isinstance(value, dict):
        raise ConfigError(
            path, key, f"expected a string or a table, got {type_name(value)} {value!r}",
            f"write {key} = \"module:function\" or {key} = {{evaluator = \"throughput\", ...}}",
        )
    if "evaluator" not in value:
        raise ConfigError(path, f"{key}.evaluator", "missing the evaluator name",
                          'add evaluator = "NAME" (see `panther-tune plugins` for the names)')
    name = value["evaluator"]
    expect(path, f"{key}.evaluator", name, (str,), "a string")
    from panther.tuner import plugins

    available = plugins.evaluators()
    factory = available[find_name(path, f"{key}.evaluator", "evaluator", name, available)]
    options = {k: _resolve_option(path, f"{key}.{k}", v) for k, v in value.items() if k != "evaluator"}
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    # Evaluators that compare against the original (e.g. "agreement") get an
    # untouched copy of it, since tuning swaps layers inside the live model: every
    # factory parameter annotated ReferenceModel (panther.tuner.evaluators).
    from panther.tuner.evaluators import reference_model_parameters

    for param in reference_model_parameters(factory):
        options.setdefault(param, reference_model)
    if accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        for opt in options:
            if opt not in accepted:
                raise ConfigError(
                    path, f"{key}.{opt}", f"evaluator '{name}' has no option '{opt}'",
                    f"{suggest(opt, list(accepted))}its options are: {', '.join(accepted)}",
                )
    try:
        fn = factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, key, f"evaluator '{name}' rejected its options: {exc}",
                          "fix the options in that table") from exc
    # The tuner maximises both functions; catch a lower-is-better one here, where the
    # message can point at the table, rather than when the tuner is built.
    if getattr(fn, "higher_is_better", True) is False:
        flags = [k for k in ("inverse", "negate") if k in accepted]
        raise ConfigError(
            path, key, f"evaluator '{name}' is lower-is-better, but the tuner maximises",
            f"add {' or '.join(f'{k} = true' for k in flags)} to the table" if flags
            else "use an evaluator where higher is better",
        )
    return fn


def build_search(path: Path, table: Any, default_n_trials: int) -> tuple[Any, dict[str, Any]]:
    """The search backend a ``[search]`` table describes, and the settings used (for the summary)."""
    from panther.tuner import plugins

    if table is None:
        table = {}
    expect(path, "search", table, (dict,), "a [search] table")
    check_keys(path, "search", table, SEARCH_KEYS)
    settings = {"backend": "optuna", "n_trials": default_n_trials, "seed": 0, **table}
    backend = settings.pop("backend")
    # Backend-specific keyword arguments (e.g. skopt's estimator) go in [search.options].
    options = settings.pop("options", {})
    expect(path, "search.options", options, (dict,), "a table of keyword arguments")
    expect(path, "search.backend", backend, (str,), "a backend name such as \"optuna\"")
    available = plugins.search_algorithms()
    backend = find_name(path, "search.backend", "search backend", backend, available)
    cls = available[backend]
    expect(path, "search.n_trials", settings["n_trials"], (int,), "a positive integer")
    if settings["n_trials"] < 1:
        raise ConfigError(path, "search.n_trials", f"n_trials must be >= 1, got {settings['n_trials']}",
                          "set n_trials to a positive integer")
    if settings.get("seed") is not None:
        expect(path, "search.seed", settings["seed"], (int,), "an integer seed")
    if "sampler" in settings:
        name = settings["sampler"]
        expect(path, "search.sampler", name, (str,), "a sampler name such as \"tpe\"")
        # Passed by name: OptunaSearch builds it per search, which samplers that need the
        # search space (grid) require.
        settings["sampler"] = find_name(path, "search.sampler", "Optuna sampler", name,
                                        plugins.optuna_samplers())
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    kwargs = {}
    names = [p for p in accepted if p != "self"]
    for key, value in [*settings.items(), *options.items()]:
        where = f"search.options.{key}" if key in options else f"search.{key}"
        if takes_any or key in accepted:
            kwargs[key] = value
        elif key in table or key in options:  # complain about what the user wrote, not our defaults
            raise ConfigError(
                path, where, f"search backend '{backend}' does not take '{key}'",
                f"remove it; '{backend}' "
                + (f"accepts: {', '.join(names)}" if names else "takes no options"),
            )
    try:
        search = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, "search", f"cannot create search backend '{backend}': {exc}",
                          "fix the [search] values") from exc
    return search, {"backend": backend, **kwargs}
