"""``panther-tune``: tune a model's sketched layers from the command line.

Subcommands:

``demo``
    Train a small digits classifier, tune it under an accuracy threshold and
    report the speed-up (what ``make demo`` runs).
``tune CONFIG.toml``
    Tune your own model described by a TOML file (see ``docs/cli.md``).
``plugins``
    List the installed plugins, their versions and what each contributes.
``show RESULTS`` / ``plot RESULTS``
    Inspect a saved run: a table of trials and winners, or a PNG of them.

Errors in a config file are reported as one message naming the file, the key
and the fix, with exit status 2; ``--debug`` adds the Python traceback.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import importlib
import inspect
import json
import math
import os
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CliError",
    "ConfigError",
    "TuneSpec",
    "load_tune_config",
    "print_report",
    "write_outputs",
    "build_parser",
    "main",
]

EXIT_RUNTIME = 1
EXIT_CONFIG = 2

# Names of the files a run writes into its output folder.
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SUMMARY_JSON = "summary.json"
STATE_DICT = "tuned_model.pt"
PLOTS_DIR = "plots"


# ---- errors ------------------------------------------------------------------------------
class CliError(Exception):
    """An error meant for the user: printed as one message, exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(CliError):
    """A problem in a config file, pinned to the file and the offending key.

    Args:
        path: the config file.
        key: dotted key path such as ``layers[0].selector`` (``""`` for the whole file).
        problem: what is wrong.
        fix: what to do about it.
    """

    def __init__(self, path: str | os.PathLike[str], key: str, problem: str, fix: str) -> None:
        self.path = os.fspath(path)
        self.key = key
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: key '{key}'" if key else self.path
        super().__init__(f"error in {where}: {problem}\n  fix: {fix}", EXIT_CONFIG)


# ---- config file -------------------------------------------------------------------------
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
LAYER_KEYS = ("selector", "params", "separate", "copy_weights")
SEARCH_KEYS = ("backend", "sampler", "n_trials", "seed", "storage", "study_name", "load_if_exists",
               "options")
THRESHOLD_KEYS = ("drop", "relative")
PARAM_SPEC_KEYS = {
    "int": ("type", "low", "high", "step", "log"),
    "float": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices"),
}


@dataclasses.dataclass
class TuneSpec:
    """A parsed and checked ``tune`` config: everything needed to start tuning.

    Attributes:
        path: the config file.
        model: the model built by the factory.
        accuracy_fn: ``model -> float``, higher is better.
        speed_fn: ``model -> float`` to maximise under the threshold, or ``None``.
        threshold: ``("absolute", value)``, ``("drop", value)``, ``("relative", value)``
            or ``None``.
        configs: the ``TuningConfigs`` to tune.
        search: the search algorithm instance.
        search_settings: the ``[search]`` values used (for the summary).
        num_runs_per_param: evaluations per parameter set.
        output: the output folder named in the file, or ``None``.
        verbose: pass ``verbose=True`` to the tuner.
        speed_label: how the before/after table names the speed row.
    """

    path: Path
    model: Any
    accuracy_fn: Callable[[Any], float]
    speed_fn: Callable[[Any], float] | None
    threshold: tuple[str, float] | None
    configs: Any
    search: Any
    search_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_runs_per_param: int = 1
    output: str | None = None
    verbose: bool = False
    speed_label: str = "speed"


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _check_keys(path: Path, prefix: str, table: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in table:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                path,
                where,
                f"unknown key '{key}'",
                f"{_suggest(key, allowed)}allowed keys here are: {', '.join(allowed)}",
            )


def _find_name(path: Path, key: str, what: str, name: str, available: Sequence[str]) -> str:
    """The registered spelling of ``name`` (compared case-insensitively), or a ConfigError."""
    for candidate in available:
        if candidate.lower() == name.lower():
            return candidate
    raise ConfigError(
        path, key, f"no {what} named '{name}'",
        f"{_suggest(name, list(available))}installed: {', '.join(sorted(available)) or 'none'} "
        "(`panther-tune plugins` lists them)",
    )


def _type_name(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _expect(path: Path, key: str, value: Any, types: tuple[type, ...], what: str) -> None:
    # bool is an int subclass; a stray `true` where a count belongs is a mistake.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ConfigError(path, key, f"expected {what}, got {_type_name(value)} {value!r}", f"write {what}")


def _import_object(path: Path, key: str, ref: Any) -> Any:
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
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure while importing user code is reported
        raise ConfigError(
            path,
            key,
            f"cannot import module '{module_name}' ({type(exc).__name__}: {exc})",
            f"make '{module_name}' importable: install its package, run panther-tune from the "
            f"folder that holds it, or put it next to the config file ({path.resolve().parent}), "
            "which is added to the import path",
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                path,
                key,
                f"'{module_name}' has no attribute '{attr_path}'",
                f"{_suggest(part, names)}check the name after the colon in {ref!r}",
            )
        obj = getattr(obj, part)
    return obj


def _resolve_option(path: Path, key: str, value: Any) -> Any:
    """Evaluator options: ``{call = "mod:fn"}`` calls ``fn()``, ``{ref = "mod:obj"}`` imports."""
    if isinstance(value, dict) and set(value) in ({"call"}, {"ref"}):
        (kind, ref), = value.items()
        obj = _import_object(path, f"{key}.{kind}", ref)
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


def _build_function(
    path: Path, key: str, value: Any, reference_model: Any
) -> Callable[[Any], float]:
    """An accuracy/speed function from ``'mod:fn'`` or ``{evaluator = NAME, ...options}``."""
    if isinstance(value, str):
        fn = _import_object(path, key, value)
        if not callable(fn):
            raise ConfigError(path, key, f"{value!r} is not callable",
                              "point it at a function taking the model and returning a float")
        return fn
    if not isinstance(value, dict):
        raise ConfigError(
            path, key, f"expected a string or a table, got {_type_name(value)} {value!r}",
            f"write {key} = \"module:function\" or {key} = {{evaluator = \"throughput\", ...}}",
        )
    if "evaluator" not in value:
        raise ConfigError(path, f"{key}.evaluator", "missing the evaluator name",
                          'add evaluator = "NAME" (see `panther-tune plugins` for the names)')
    name = value["evaluator"]
    _expect(path, f"{key}.evaluator", name, (str,), "a string")
    from panther.tuner import plugins

    available = plugins.evaluators()
    factory = available[_find_name(path, f"{key}.evaluator", "evaluator", name, list(available))]
    options = {k: _resolve_option(path, f"{key}.{k}", v) for k, v in value.items() if k != "evaluator"}
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    # Evaluators that compare against the original (e.g. "agreement") get an
    # untouched copy of it, since tuning swaps layers inside the live model.
    if "reference_model" in accepted and "reference_model" not in options:
        options["reference_model"] = reference_model
    if accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        for opt in options:
            if opt not in accepted:
                raise ConfigError(
                    path, f"{key}.{opt}", f"evaluator '{name}' has no option '{opt}'",
                    f"{_suggest(opt, list(accepted))}its options are: {', '.join(accepted)}",
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


def _parse_param_space(path: Path, key: str, value: Any) -> Any:
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
                path, pkey, f"expected a list of values or a table, got {_type_name(spec)} {spec!r}",
                f"write {name} = [8, 16, 32] or {name} = {{type = \"int\", low = 8, high = 64, step = 8}}",
            )
        kind = spec.get("type")
        if kind not in PARAM_SPEC_KEYS:
            raise ConfigError(
                path, f"{pkey}.type", f"unknown parameter space type {kind!r}",
                f"{_suggest(str(kind), list(PARAM_SPEC_KEYS))}use type = \"int\", \"float\" or \"categorical\"",
            )
        _check_keys(path, pkey, spec, PARAM_SPEC_KEYS[kind])
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


def _check_layer_params(path: Path, key: str, model: Any, names: list[str], params: Any) -> None:
    """Reject parameters the selected layers' types do not have, before any tuning starts."""
    from panther.tuner import plugins

    for name in names:
        module = model.get_submodule(name)
        layer_type = plugins.layer_type_for(module)
        if layer_type is None:
            known = ", ".join(sorted({lt.name for lt in plugins.layer_types()}))
            raise ConfigError(
                path, key.replace(".params", ".selector"),
                f"layer '{name}' is a {type(module).__name__}, which no installed layer type can sketch",
                f"narrow the selector (e.g. add type = \"Linear\"); sketchable types: {known}",
            )
        if params == "auto":
            continue
        unknown = sorted(set(params) - set(layer_type.param_names))
        if unknown:
            raise ConfigError(
                path, f"{key}.{unknown[0]}",
                f"{layer_type.name} layers (e.g. '{name}') have no parameter '{unknown[0]}'",
                f"{_suggest(unknown[0], layer_type.param_names)}"
                f"their parameters are: {', '.join(layer_type.param_names)}",
            )


def _parse_search(path: Path, table: Any) -> tuple[Any, dict[str, Any]]:
    from panther.tuner import plugins

    if table is None:
        table = {}
    _expect(path, "search", table, (dict,), "a [search] table")
    _check_keys(path, "search", table, SEARCH_KEYS)
    settings = {"backend": "optuna", "n_trials": 20, "seed": 0, **table}
    backend = settings.pop("backend")
    # Backend-specific keyword arguments (e.g. skopt's estimator) go in [search.options].
    options = settings.pop("options", {})
    _expect(path, "search.options", options, (dict,), "a table of keyword arguments")
    _expect(path, "search.backend", backend, (str,), "a backend name such as \"optuna\"")
    available = plugins.search_algorithms()
    backend = _find_name(path, "search.backend", "search backend", backend, list(available))
    cls = available[backend]
    _expect(path, "search.n_trials", settings["n_trials"], (int,), "a positive integer")
    if settings["n_trials"] < 1:
        raise ConfigError(path, "search.n_trials", f"n_trials must be >= 1, got {settings['n_trials']}",
                          "set n_trials to a positive integer")
    if settings.get("seed") is not None:
        _expect(path, "search.seed", settings["seed"], (int,), "an integer seed")
    if "sampler" in settings:
        name = settings["sampler"]
        _expect(path, "search.sampler", name, (str,), "a sampler name such as \"tpe\"")
        # Passed by name: OptunaSearch builds it per search, which samplers that need the
        # search space (grid) require.
        settings["sampler"] = _find_name(path, "search.sampler", "Optuna sampler", name,
                                         list(plugins.optuna_samplers()))
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


def load_tune_config(path: str | os.PathLike[str]) -> TuneSpec:
    """Parse and check a ``panther-tune tune`` TOML file; build the model and search.

    Raises:
        ConfigError: naming the file, the key and the fix, for anything wrong in the file.
    """
    from panther.tuner import LayerConfig, TuningConfigs
    from panther.tuner.selection import select_layers

    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "", "the config file does not exist",
                          "check the path (it is relative to the current folder)")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML ({exc})", "fix the syntax at that line") from exc

    _check_keys(path, "", raw, list(TOP_KEYS))
    for required in ("model", "accuracy", "layers"):
        if required not in raw:
            raise ConfigError(path, required, "missing required key", f"add {required} = {TOP_KEYS[required]}")

    # The config's folder goes on the import path so a factory module can sit next to it.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)

    factory = _import_object(path, "model", raw["model"])
    if not callable(factory):
        raise ConfigError(path, "model", f"{raw['model']!r} is not callable",
                          "point it at a function that returns a torch.nn.Module")
    model_kwargs = raw.get("model_kwargs", {})
    _expect(path, "model_kwargs", model_kwargs, (dict,), "a table of keyword arguments")
    try:
        model = factory(**model_kwargs)
    except Exception as exc:  # user code may raise anything
        raise ConfigError(
            path, "model", f"calling {raw['model']!r} failed ({type(exc).__name__}: {exc})",
            "make the factory work on its own (run it in Python) or fix model_kwargs",
        ) from exc
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ConfigError(path, "model", f"{raw['model']!r} returned {type(model).__name__}, not a torch.nn.Module",
                          "return the (trained) model from the factory")

    reference = copy.deepcopy(model).eval()
    accuracy_fn = _build_function(path, "accuracy", raw["accuracy"], reference)
    speed_fn = _build_function(path, "speed", raw["speed"], reference) if "speed" in raw else None

    threshold = None
    if "threshold" in raw:
        value = raw["threshold"]
        if isinstance(value, dict):
            _check_keys(path, "threshold", value, THRESHOLD_KEYS)
            if len(value) != 1:
                raise ConfigError(path, "threshold", "give exactly one of drop or relative",
                                  "write threshold = {drop = 0.01} or threshold = {relative = 0.01}")
            (kind, amount), = value.items()
            _expect(path, f"threshold.{kind}", amount, (int, float), "a number")
            if not 0 <= amount < (1 if kind == "relative" else math.inf):
                raise ConfigError(path, f"threshold.{kind}", f"{kind} must be >= 0 (and < 1 when relative), got {amount}",
                                  "use e.g. 0.01 for one percent")
            threshold = (kind, float(amount))
        else:
            _expect(path, "threshold", value, (int, float), "a number or {drop = x} / {relative = x}")
            threshold = ("absolute", float(value))
        if speed_fn is None:
            raise ConfigError(path, "speed", "a threshold needs a speed function to maximise",
                              'add speed = {evaluator = "throughput", ...} or remove threshold')

    layers = raw["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(t, dict) for t in layers):
        raise ConfigError(path, "layers", "expected one or more [[layers]] tables",
                          'add [[layers]] with selector = {type = "Linear"} and params = "auto"')
    configs = TuningConfigs()
    for i, table in enumerate(layers):
        key = f"layers[{i}]"
        _check_keys(path, key, table, LAYER_KEYS)
        if "selector" not in table:
            raise ConfigError(path, f"{key}.selector", "missing the layer selector",
                              'add selector = {type = "Linear"} (or a name, regex or list)')
        selector = table["selector"]
        if isinstance(selector, dict):
            from panther.tuner.selection import SELECTOR_KEYS

            _check_keys(path, f"{key}.selector", selector, SELECTOR_KEYS)
        params = _parse_param_space(path, f"{key}.params", table.get("params", "auto"))
        for flag in ("separate", "copy_weights"):
            if flag in table:
                _expect(path, f"{key}.{flag}", table[flag], (bool,), "true or false")
        try:
            names = select_layers(model, selector)
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, f"{key}.selector", str(exc),
                              "change the selector: a module name, a regex matching whole names, "
                              'a list of those, or a table such as {type = "Linear"}') from exc
        _check_layer_params(path, f"{key}.params", model, names, params)
        try:
            configs.append(LayerConfig(selector, params, separate=table.get("separate", True),
                                       copy_weights=table.get("copy_weights", True)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, key, str(exc), "fix this [[layers]] table") from exc

    search, settings = _parse_search(path, raw.get("search"))
    runs = raw.get("num_runs_per_param", 1)
    _expect(path, "num_runs_per_param", runs, (int,), "a positive integer")
    if runs < 1:
        raise ConfigError(path, "num_runs_per_param", f"must be >= 1, got {runs}", "use 1 or more")
    output = raw.get("output")
    if output is not None:
        _expect(path, "output", output, (str,), "a folder path")
    verbose = raw.get("verbose", False)
    _expect(path, "verbose", verbose, (bool,), "true or false")
    speed = raw.get("speed")
    if isinstance(speed, dict):
        flags = [k for k in ("inverse", "negate") if speed.get(k) is True]
        speed_label = f"speed: {speed.get('evaluator')}" + (f" ({flags[0]})" if flags else "")
    else:
        speed_label = f"speed: {speed}"
    return TuneSpec(path, model, accuracy_fn, speed_fn, threshold, configs, search, settings,
                    runs, output, verbose, speed_label)


# ---- running and reporting ---------------------------------------------------------------
def _param_count(model: Any) -> int:
    # Learnable parameters, as the layer types' cost models count them; the fixed
    # sketches of SKLinear/SKConv2d are buffers rebuilt from their seed.
    return sum(p.numel() for p in model.parameters())


def _layer_choices(original: Any, tuned: Any) -> list[dict[str, Any]]:
    """Per replaced module: its name, old and new class, and the sketch's settings."""
    before = dict(original.named_modules())
    rows = []
    for name, module in tuned.named_modules():
        old = before.get(name)
        if not name or old is None or type(old) is type(module):
            continue
        settings = {
            attr: getattr(module, attr)
            for attr in ("num_terms", "low_rank", "num_random_features", "kernel_fn", "init", "seed")
            if isinstance(getattr(module, attr, None), (int, float, str, bool))
        }
        rows.append({
            "layer": name,
            "original": type(old).__name__,
            "sketched": type(module).__name__,
            "params_before": _param_count(old),
            "params_after": _param_count(module),
            **settings,
        })
    return rows


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return format(value, spec)
    return str(value)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    for line in (headers, ["-" * w for w in widths], *cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def print_report(summary: dict[str, Any]) -> None:
    """Print the before/after table and the per-layer choices of a run's summary."""
    before, after = summary["before"], summary["after"]
    speed_name = summary.get("speed_name", "speed")
    rows = [["accuracy", _fmt(before.get("accuracy")), _fmt(after.get("accuracy")), ""]]
    if before.get("speed") is not None and after.get("speed") is not None:
        ratio = after["speed"] / before["speed"] if before["speed"] else float("nan")
        spec = summary.get("speed_format", ".4g")
        rows.append([speed_name, _fmt(before["speed"], spec), _fmt(after["speed"], spec), f"{ratio:.2f}x"])
    if before.get("flops") and after.get("flops"):
        rows.append(["MFLOPs/sample", _fmt(before["flops"] / 1e6, ".2f"), _fmt(after["flops"] / 1e6, ".2f"),
                     f"{before['flops'] / after['flops']:.2f}x fewer"])
    rows.append(["parameters", f"{before['params']:,}", f"{after['params']:,}",
                 f"{before['params'] / max(1, after['params']):.2f}x fewer"])
    print()
    _print_table(["", "before", "after", "change"], rows)
    threshold = summary.get("threshold")
    if threshold is not None:
        met = after.get("accuracy") is not None and after["accuracy"] >= threshold - 1e-12
        print(f"accuracy threshold {threshold:.4f}: {'met' if met else 'NOT met'}")
    layers = summary.get("layers", [])
    print()
    if layers:
        keys = [k for k in ("num_terms", "low_rank", "num_random_features", "init") if any(k in r for r in layers)]
        _print_table(["layer", "original", "sketched", *keys, "params"],
                     [[r["layer"], r["original"], r["sketched"], *(r.get(k, "-") for k in keys),
                       f"{r['params_before']:,} -> {r['params_after']:,}"] for r in layers])
    else:
        print("no layer was replaced (no configuration met the threshold)")


def _plot_trials(
    df: Any, path: Path, title: str = "", threshold: float | None = None, score_label: str = "score"
) -> Path:
    """One row per search: score per trial with the best so far, and accuracy per trial."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # Repeats answered from the cache carry no new information; drawing them would
    # only pile points on top of the trial they repeat.
    df = df[~_is_cached(df)]
    groups = list(dict.fromkeys(df["layer_name"])) if len(df) else []
    n = max(1, len(groups))
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.2 * n), squeeze=False)
    for row, group in enumerate(groups):
        part = df[df["layer_name"] == group].reset_index(drop=True)
        x = list(range(len(part)))
        score = part["score"].astype(float)
        feasible = score.apply(math.isfinite)
        finite = score.where(feasible)
        ax = axes[row][0]
        ax.plot(x, finite, "o", label="score (feasible)")
        if finite.notna().any():
            # The best so far holds across rejected trials (cummax alone leaves gaps there).
            ax.step(x, finite.cummax().ffill(), where="post", color="tab:green", label="best so far")
        rejected = [i for i in x if not feasible[i]]
        if rejected:
            # Rejected trials have no score; mark them on a band below every feasible one.
            low, high = (finite.min(), finite.max()) if finite.notna().any() else (0.0, 0.0)
            floor = low - 0.1 * ((high - low) or abs(low) or 1.0)
            ax.plot(rejected, [floor] * len(rejected), "x", color="tab:red",
                    label="rejected / skipped / failed (no score)")
        ax.set_title(f"{group}: score per trial (higher is better)")
        ax.set_xlabel("trial")
        ax.set_ylabel(score_label)
        ax.legend(fontsize=7)
        ax2 = axes[row][1]
        if "accuracy" in part and part["accuracy"].notna().any():
            accuracy = part["accuracy"].astype(float)
            ax2.plot(x, accuracy, "-", color="tab:purple", alpha=0.4)
            ax2.plot([i for i in x if feasible[i]], accuracy[feasible], "s", color="tab:purple",
                     label="feasible")
            ax2.plot(rejected, accuracy[~feasible], "x", color="tab:red", label="rejected / failed")
            if threshold is not None and math.isfinite(threshold):
                ax2.axhline(threshold, color="gray", ls="--", lw=1, label="threshold")
            ax2.set_title(f"{group}: accuracy per trial")
            ax2.set_xlabel("trial")
            ax2.set_ylabel("accuracy")
            ax2.legend(fontsize=7)
        else:
            ax2.axis("off")
        for axis in (ax, ax2):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not groups:
        axes[0][0].text(0.5, 0.5, "no trials", ha="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_outputs(
    tuner: Any, tuned: Any, summary: dict[str, Any], output: Path
) -> dict[str, str]:
    """Write results (JSON manifest + CSV), the tuned state_dict, plots and the summary.

    Returns ``{what: path}`` of the files written (also stored in ``summary.json``).
    """
    import torch

    output.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    tuner.save_tuning_results(str(output / RESULTS_JSON))
    files["results"] = str(output / RESULTS_JSON)
    df = tuner.get_results_dataframe()
    df.to_csv(output / RESULTS_CSV, index=False)
    files["trials_csv"] = str(output / RESULTS_CSV)
    torch.save(tuned.state_dict(), output / STATE_DICT)
    files["state_dict"] = str(output / STATE_DICT)
    plots = output / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    # Plots left by an earlier run in this folder would be mistaken for this run's.
    for stale in plots.glob("*.png"):
        stale.unlink()
    files["trials_plot"] = str(_plot_trials(df, plots / "trials.png", summary.get("title", ""),
                                            summary.get("threshold"),
                                            summary.get("score_name", "score")))
    before = set(plots.glob("*.png"))
    try:
        tuner.visualize_tuning_results(save_path=str(plots / "tuner.png"), show_plot=False)
    except Exception as exc:  # a plotting problem must not lose the results
        print(f"warning: the tuner's own plots failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    for i, png in enumerate(sorted(set(plots.glob("*.png")) - before)):
        files[f"tuner_plot_{i}"] = str(png)
    summary = {**summary, "files": files}
    (output / SUMMARY_JSON).write_text(json.dumps(_json_safe(summary), indent=2))
    files["summary"] = str(output / SUMMARY_JSON)
    return files


def _print_files(output: Path, files: dict[str, str]) -> None:
    print(f"\nwrote to {output.resolve()}:")
    for path in files.values():
        print(f"  {Path(path).relative_to(output) if Path(path).is_relative_to(output) else path}")


# ---- subcommands -------------------------------------------------------------------------
def _tune_keeping_results(tuner: Any, output: Path) -> bool:
    """Run ``tuner.tune()``; on Ctrl-C keep what was found. Returns whether it was interrupted.

    The tuner restores the model and keeps the trials so far when interrupted. They are
    written to ``output`` at once, before anything else runs, so a second Ctrl-C or a failure
    while the caller finishes its report cannot lose them.
    """
    try:
        tuner.tune()
    except KeyboardInterrupt:
        output.mkdir(parents=True, exist_ok=True)
        tuner.save_tuning_results(str(output / RESULTS_JSON))
        tuner.get_results_dataframe().to_csv(output / RESULTS_CSV, index=False)
        print(f"\ninterrupted: the trials so far are saved in {output}; writing the rest "
              "(unverified)", file=sys.stderr)
        return True
    return False


def cmd_tune(args: argparse.Namespace) -> int:
    """``panther-tune tune CONFIG``."""
    from panther.tuner import SKAutoTuner

    spec = load_tune_config(args.config)
    model = spec.model
    original = copy.deepcopy(model).eval()
    print(f"config {spec.path}: {len(spec.configs)} layer config(s), search {spec.search_settings}")
    constraint: dict[str, Any] = {}
    if spec.threshold is not None:
        kind, amount = spec.threshold
        if kind == "absolute":
            constraint["accuracy_threshold"] = amount
        else:
            # The tuner measures the original once and derives the threshold from it.
            constraint.update(accuracy_tolerance=amount,
                              tolerance_mode="absolute" if kind == "drop" else "relative")
    seed = spec.search_settings.get("seed")
    try:
        tuner = SKAutoTuner(
            model,
            spec.configs,
            spec.accuracy_fn,
            search_algorithm=spec.search,
            verbose=spec.verbose,
            optmization_eval_func=spec.speed_fn,
            num_runs_per_param=spec.num_runs_per_param,
            progress=True,
            seed=seed if isinstance(seed, int) else 0,
            **constraint,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(spec.path, "layers", str(exc), "fix the [[layers]] tables") from exc
    output = Path(args.output or spec.output or "panther-tune-output")
    interrupted = _tune_keeping_results(tuner, output)
    tuned = tuner.apply_best_params().eval()
    info = tuner.report
    before_acc = info.get("baseline_accuracy")
    before_speed = info.get("baseline_speed")
    after_acc = info.get("final_accuracy")
    after_speed = info.get("final_speed")
    # The tuner verifies the combined model; measure ourselves when it did not, except after
    # Ctrl-C, when the user asked to stop: the report then says "not measured".
    if not interrupted:
        if before_acc is None:
            before_acc = float(spec.accuracy_fn(original))
        if after_acc is None:
            after_acc = float(spec.accuracy_fn(tuned))
        if spec.speed_fn is not None:
            if before_speed is None:
                before_speed = float(spec.speed_fn(original))
            if after_speed is None:
                after_speed = float(spec.speed_fn(tuned))
    summary = {
        "title": f"panther-tune {spec.path.name}",
        "config": str(spec.path.resolve()),
        "search": spec.search_settings,
        "threshold": info.get("effective_threshold"),
        "verified": info.get("verified"),
        "speed_name": spec.speed_label,
        "score_name": f"score = {spec.speed_label}" if spec.speed_fn is not None else "score = accuracy",
        "before": {"accuracy": before_acc, "speed": before_speed, "params": _param_count(original)},
        "after": {"accuracy": after_acc, "speed": after_speed, "params": _param_count(tuned)},
        "layers": _layer_choices(original, tuned),
        "best_params": tuner.get_best_params(),
        "interrupted": interrupted,
    }
    print_report(summary)
    files = write_outputs(tuner, tuned, summary, output)
    _print_files(output, files)
    return 130 if interrupted else 0


DEMO_SIZES = {
    # width, channels, epochs, timing batch
    False: (2048, 32, 8, 256),
    True: (512, 16, 4, 64),
}
# Ranks the demo tries: small enough that the accuracy threshold decides (at ranks 2-3
# the trained MLP loses most of its accuracy, from about 4 on it keeps it).
DEMO_RANKS = {
    False: ([2, 3, 4, 6, 8, 16, 32], [1, 2, 4]),
    True: ([2, 4, 8], [2, 4]),
}


def _demo_space(layer_type: Any, ranks: list[int]) -> dict[str, Any]:
    """The demo's search space for one layer type: ranks to try, data-aware init if offered."""
    from panther.tuner import Categorical

    space: dict[str, Any] = {}
    names = layer_type.param_names
    if "num_terms" in names:
        # One term: with the SVD initialisation a second term of rank k costs as much as
        # one term of rank 2k and is no more accurate, so it only lengthens the search.
        space["num_terms"] = Categorical([1])
    if "low_rank" in names:
        space["low_rank"] = Categorical(ranks)
    if "init" in names:
        # A random sketch of a trained layer throws its weights away; the SVD
        # initialisation keeps the dominant part of the trained map.
        space["init"] = Categorical(["svd"])
    return space


def _warm_up_sketches() -> None:
    """Run a tiny sketched layer once so loading the native kernels is not charged to a trial."""
    import torch

    from panther.nn import SKLinear

    with torch.no_grad():
        SKLinear(8, 8, num_terms=1, low_rank=2, seed=0)(torch.zeros(1, 8))


def cmd_demo(args: argparse.Namespace) -> int:
    """``panther-tune demo``: train a digits model, tune it, report before/after."""
    import torch

    from panther import demo
    from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs, plugins

    width, channels, epochs, batch = DEMO_SIZES[bool(args.quick)]
    ranks_fc, ranks_conv = DEMO_RANKS[bool(args.quick)]
    # By default every point of the (small) spaces is tried once.
    trials = args.trials if args.trials is not None else max(len(ranks_fc), len(ranks_conv))
    if trials < 1:
        raise CliError("--trials must be >= 1", EXIT_CONFIG)
    if not 0 <= args.tolerance < 1:
        raise CliError("--tolerance must lie in [0, 1), e.g. 0.015 for 1.5 points", EXIT_CONFIG)
    output = Path(args.output)
    if args.threads is not None:
        if args.threads < 1:
            raise CliError("--threads must be >= 1", EXIT_CONFIG)
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = demo.load_digits_data(seed=args.seed)
    model = demo.DigitsNet(width=width, channels=channels)
    print(f"digits: {len(data.x_train)} train / {len(data.x_val)} validation images; model "
          f"conv(1->{channels}->{channels}) + MLP {channels * 16}->{width}->{width}->10")
    t0 = time.perf_counter()
    demo.train_model(model, data, epochs=epochs, seed=args.seed,
                     on_epoch=lambda e, loss: print(f"  epoch {e + 1}/{epochs}  loss {loss:.4f}", flush=True))
    original = copy.deepcopy(model).eval()
    base_acc = demo.accuracy(model, data.x_val, data.y_val)
    threshold = base_acc - args.tolerance
    print(f"trained in {time.perf_counter() - t0:.1f} s: validation accuracy {base_acc:.4f}; "
          f"tuning for accuracy >= {threshold:.4f} (tolerance {args.tolerance})")

    def accuracy_fn(m: Any) -> float:
        return demo.accuracy(m, data.x_val, data.y_val)

    example = data.x_val[:1]
    base_flops = demo.count_flops(model, example)
    timing_batch = data.x_val.repeat(batch // len(data.x_val) + 1, 1, 1, 1)[:batch]
    if args.objective == "flops":
        def speed_fn(m: Any) -> float:
            # FLOP reduction factor: exact, so the same seed gives the same winners.
            return base_flops / demo.count_flops(m, example)
    else:
        def speed_fn(m: Any) -> float:
            return demo.measure_throughput(m, timing_batch, iterations=5, repeats=3, warmup=1)

    linear = plugins.get_layer_type("Linear")
    conv = plugins.get_layer_type("Conv2d")
    configs = TuningConfigs([
        LayerConfig(["fc1", "fc2"], _demo_space(linear, ranks_fc), separate=True),
        LayerConfig("conv2", _demo_space(conv, ranks_conv), separate=True),
    ])
    _warm_up_sketches()
    tuner = SKAutoTuner(
        model,
        configs,
        accuracy_fn,
        # Optuna's brute-force sampler walks the small spaces without repeats; with
        # --trials below their size it stops early.
        search_algorithm=OptunaSearch(n_trials=trials, sampler="bruteforce", seed=args.seed),
        accuracy_threshold=threshold,
        optmization_eval_func=speed_fn,
        progress=True,
        seed=args.seed,
        # Off by default: the pre-check times each candidate against the dense layer,
        # which on a busy machine rejects good candidates at random and makes the
        # choices irreproducible. The final table measures real throughput either way.
        speed_precheck=bool(args.speed_check),
    )
    interrupted = _tune_keeping_results(tuner, output)
    tuned = tuner.apply_best_params().eval()

    after_acc = accuracy_fn(tuned)
    print(f"timing both models on batches of {batch} (interleaved rounds, fastest kept) ...", flush=True)
    speeds = demo.compare_throughput({"before": original, "after": tuned}, timing_batch)
    summary = {
        "title": "panther-tune demo (digits)",
        "seed": args.seed,
        "quick": bool(args.quick),
        "objective": args.objective,
        "trials_per_layer": trials,
        "threshold": threshold,
        "tolerance": args.tolerance,
        "speed_name": f"samples/s (batch {batch})",
        "score_name": ("score = model FLOP reduction (x)" if args.objective == "flops"
                       else f"score = samples/s (batch {batch})"),
        "speed_format": ".1f",
        "before": {"accuracy": base_acc, "speed": speeds["before"], "flops": base_flops,
                   "params": _param_count(original)},
        "after": {"accuracy": after_acc, "speed": speeds["after"],
                  "flops": demo.count_flops(tuned, example), "params": _param_count(tuned)},
        "layers": _layer_choices(original, tuned),
        "verified": tuner.report.get("verified"),
        "interrupted": interrupted,
        "torch_threads": torch.get_num_threads(),
    }
    print_report(summary)
    files = write_outputs(tuner, tuned, summary, output)
    _print_files(output, files)
    return 130 if interrupted else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """``panther-tune plugins``: installed plugins and their contributions."""
    from panther.tuner import plugins

    infos = plugins.list_plugins()
    if args.json:
        print(json.dumps([_json_safe(dataclasses.asdict(i)) for i in infos], indent=2))
        return 0
    for info in infos:
        if info.builtin:
            origin = "built-in"
        elif info.distribution:
            origin = f"distribution {info.distribution}"
        else:
            origin = "registered in code"
        print(f"{info.name} {info.version or '?'} ({origin})")
        for kind, names in info.contributes.items():
            if names:
                print(f"    {kind}: {', '.join(map(str, names))}")
    if not infos:
        print("no plugins registered")
    return 0


def _load_results(path_arg: str) -> tuple[Any, Any, dict[str, Any] | None, Path]:
    """Trials DataFrame, the results object (``None`` for a CSV), the run summary and the path."""
    import pandas as pd

    path = Path(path_arg)
    summary = None
    if path.is_dir():
        if (path / SUMMARY_JSON).is_file():
            summary = json.loads((path / SUMMARY_JSON).read_text())
        path = path / RESULTS_JSON
    if not path.exists():
        raise CliError(
            f"no results at {path}: pass a results file written by save_tuning_results "
            "or the output folder of panther-tune demo/tune", EXIT_CONFIG,
        )
    if path.suffix == ".csv":
        return pd.read_csv(path), None, summary, path
    from panther.tuner import load_tuning_results

    try:
        results = load_tuning_results(path)
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read results {path}: {exc}", EXIT_CONFIG) from exc
    return results.to_dataframe(), results, summary, path


def _is_cached(df: Any) -> Any:
    """Rows that repeat an earlier trial's result (status ``cached``): no new information."""
    import pandas as pd

    if "status" not in df:
        return pd.Series(False, index=df.index)
    return df["status"] == "cached"


def cmd_show(args: argparse.Namespace) -> int:
    """``panther-tune show RESULTS``: trials and winners of a saved run."""
    import pandas as pd

    df, results, summary, path = _load_results(args.results)
    repeats = _is_cached(df)
    note = f" ({int(repeats.sum())} repeated proposal(s) answered from the cache not shown)" \
        if repeats.any() else ""
    print(f"results {path}: {len(df)} trial(s){note}")
    if len(df):
        view = df[~repeats].copy()
        if "error" in view:
            # Skip reasons and error texts can be long; the start says which it is.
            view["error"] = view["error"].map(
                lambda e: "" if not isinstance(e, str) else (e if len(e) <= 48 else e[:45] + "...")
            )
        hidden = {"speed_median"}
        columns = [c for c in view.columns if c not in hidden and not view[c].isna().all()
                   and not (view[c].astype(str) == "").all()]
        with pd.option_context("display.max_rows", args.max_rows, "display.width", 200,
                               "display.max_columns", 30):
            print(view[columns].to_string(index=False, max_rows=args.max_rows))
        print("\nwinners (best feasible score of each search):")
        scores = view["score"].astype(float)
        feasible = view[scores.apply(math.isfinite)]
        if len(feasible):
            best = feasible.loc[feasible.groupby("layer_name", sort=False)["score"].idxmax()]
            print(best[[c for c in columns if c != "error"]].to_string(index=False))
        else:
            print("  none: every trial was rejected, skipped or failed")
    if results is not None:
        print("\napplied configuration (verified on the whole model):" if results.info.get("verified")
              else "\napplied configuration:")
        if results.selection:
            for name, choice in results.selection.items():
                print(f"  {name}: {choice.layer_type} {choice.params} seed={choice.seed}")
        else:
            print("  none: the original model is kept")
    if summary is not None:
        print_report(summary)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``panther-tune plot RESULTS``: a PNG of score and accuracy per trial."""
    df, results, summary, path = _load_results(args.results)
    out = Path(args.output) if args.output else path.with_name(path.stem + "_trials.png")
    summary = summary or {}
    threshold = (results.info.get("effective_threshold") if results is not None
                 else summary.get("threshold"))
    _plot_trials(df, out, title=summary.get("title") or str(path), threshold=threshold,
                 score_label=summary.get("score_name", "score"))
    print(f"wrote {out.resolve()}")
    return 0


# ---- argument parsing --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``panther-tune`` argument parser (subcommands demo, tune, plugins, show, plot)."""
    # --debug works before or after the subcommand; SUPPRESS keeps the subparser's
    # default from overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks on errors")
    parser = argparse.ArgumentParser(
        prog="panther-tune",
        description="Make PyTorch models faster by tuning sketched layers under an accuracy threshold.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", parents=[common], help="train, tune and report on the digits data",
                          description="Train a conv+MLP digits classifier, tune Linear and Conv2d "
                          "layers under an accuracy threshold and report the speed-up.")
    demo.add_argument("--output", default="panther-demo-output", help="output folder (default: %(default)s)")
    demo.add_argument("--trials", type=int, default=None, help="trials per layer (default: every point of the demo's search space)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data split, training and search")
    demo.add_argument("--quick", action="store_true", help="smaller model and fewer trials (a smoke test)")
    demo.add_argument("--tolerance", type=float, default=0.015,
                      help="allowed accuracy drop from the original (default: %(default)s)")
    demo.add_argument("--objective", choices=("flops", "throughput"), default="flops",
                      help="what the search maximises under the threshold: 'flops' (fewest FLOPs, "
                      "exact and reproducible) or 'throughput' (measured, noisy); default %(default)s")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: torch's choice); 1 helps on a busy machine")
    demo.add_argument("--speed-check", action="store_true",
                      help="also time each candidate layer against the dense one and skip it "
                      "unless it is faster (catches FLOP savings that are wall-clock losses; "
                      "timing makes the choices depend on machine load)")
    demo.set_defaults(func=cmd_demo)

    tune = sub.add_parser("tune", parents=[common], help="tune a model described by a TOML config",
                          description="Tune the model named in CONFIG (TOML); see docs/cli.md.")
    tune.add_argument("config", help="the TOML config file")
    tune.add_argument("--output", default=None, help="output folder (default: the config's output or "
                      "panther-tune-output)")
    tune.set_defaults(func=cmd_tune)

    plug = sub.add_parser("plugins", parents=[common], help="list installed plugins",
                          description="List the registered plugins, their versions and contributions.")
    plug.add_argument("--json", action="store_true", help="print JSON")
    plug.set_defaults(func=cmd_plugins)

    show = sub.add_parser("show", parents=[common], help="print the trials and winners of a saved run",
                          description="Print the trials and the winners of saved results.")
    show.add_argument("results", help="results file (save_tuning_results) or an output folder")
    show.add_argument("--max-rows", type=int, default=60, help="trial rows to print (default: %(default)s)")
    show.set_defaults(func=cmd_show)

    plot = sub.add_parser("plot", parents=[common], help="plot a saved run to PNG",
                          description="Plot score and accuracy per trial of saved results.")
    plot.add_argument("results", help="results file (save_tuning_results) or an output folder")
    plot.add_argument("--output", default=None, help="PNG path (default: next to the results)")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``panther-tune`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    try:
        code = args.func(args)
    except CliError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"panther-tune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("panther-tune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return EXIT_RUNTIME
    except Exception as exc:  # one clear line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"panther-tune: {type(exc).__name__}: {exc}\n  (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME
    if args.command in ("demo", "tune"):
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
