"""Read a ``panther-tune tune`` config: parse the TOML, check it, build the model and search.

:func:`load_tune_config` returns a :class:`TuneSpec` or raises a
:class:`~panther.cli.errors.ConfigError` naming the file, the key and the fix. Every
check runs before any tuning starts.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panther.cli.build import build_function, build_search, import_object
from panther.cli.errors import ConfigError
from panther.cli.schema import (
    LAYER_KEYS,
    THRESHOLD_KEYS,
    TOP_KEYS,
    check_keys,
    expect,
    parse_param_space,
    suggest,
)

if TYPE_CHECKING:
    from panther.tuner.settings import AccuracyConstraint

__all__ = ["TuneSpec", "load_tune_config"]

@dataclasses.dataclass
class TuneSpec:
    """A parsed and checked ``tune`` config: everything needed to start tuning.

    Attributes:
        path: the config file.
        model: the model built by the factory.
        accuracy_fn: ``model -> float``, higher is better.
        speed_fn: ``model -> float`` to maximise under the threshold, or ``None``.
        threshold: the accuracy constraint (absolute, drop or relative), or ``None``.
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
    threshold: AccuracyConstraint | None
    configs: Any
    search: Any
    search_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_runs_per_param: int = 1
    output: str | None = None
    verbose: bool = False
    speed_label: str = "speed"


def _check_layers(path: Path, index: int, model: Any, names: list[str], table: dict[str, Any],
                  params: Any) -> None:
    """Check one ``[[layers]]`` table's layers with the tuner's own checks, pinned to keys.

    The tuner's :mod:`~panther.tuner.groups` decides what a layer type can sketch and which
    values fit a layer; the CLI only adds the key and a "did you mean" for misspelt names.
    """
    from panther.tuner.groups import check_joint_types, resolve_layer_type, validate_space

    key = f"layers[{index}]"
    resolved = {}
    for name in names:
        try:
            layer_type = resolved[name] = resolve_layer_type(model, name)
        except ValueError as exc:
            raise ConfigError(path, f"{key}.selector", str(exc),
                              'narrow the selector (e.g. add type = "Linear") or install a layer '
                              "type for it") from exc
        if params == "auto":
            continue
        unknown = sorted(set(params) - set(layer_type.param_names))
        if unknown:
            raise ConfigError(
                path, f"{key}.params.{unknown[0]}",
                f"{layer_type.name} layers (e.g. '{name}') have no parameter '{unknown[0]}'",
                f"{suggest(unknown[0], layer_type.param_names)}"
                f"their parameters are: {', '.join(layer_type.param_names)}",
            )
        try:
            validate_space(model, name, layer_type, params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, f"{key}.params", str(exc),
                              "choose values every selected layer accepts") from exc
    if params != "auto" and not table.get("separate", True):
        try:
            check_joint_types(index, names, resolved, params)
        except ValueError as exc:
            raise ConfigError(path, f"{key}.separate", str(exc),
                              "set separate = true, or split the table by layer type") from exc


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(path, "", "the config file does not exist",
                          "check the path (it is relative to the current folder)")
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML ({exc})", "fix the syntax at that line") from exc


def _build_model(path: Path, raw: dict[str, Any]) -> Any:
    factory = import_object(path, "model", raw["model"])
    if not callable(factory):
        raise ConfigError(path, "model", f"{raw['model']!r} is not callable",
                          "point it at a function that returns a torch.nn.Module")
    model_kwargs = raw.get("model_kwargs", {})
    expect(path, "model_kwargs", model_kwargs, (dict,), "a table of keyword arguments")
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
    return model


def _parse_threshold(path: Path, value: Any) -> AccuracyConstraint:
    """The accuracy constraint of ``threshold``, every mistake pinned to its key."""
    from panther.tuner.settings import AccuracyConstraint

    key = "threshold"
    if isinstance(value, dict):
        check_keys(path, "threshold", value, THRESHOLD_KEYS)
        if len(value) != 1:
            raise ConfigError(path, "threshold", "give exactly one of drop or relative",
                              "write threshold = {drop = 0.01} or threshold = {relative = 0.01}")
        (kind, amount), = value.items()
        key = f"threshold.{kind}"
        expect(path, key, amount, (int, float), "a number")
    else:
        expect(path, key, value, (int, float), "a number or {drop = x} / {relative = x}")
    try:
        return AccuracyConstraint.from_config(value)
    except (TypeError, ValueError) as exc:  # nan, inf, a negative loss, relative >= 1
        raise ConfigError(path, key, str(exc),
                          "write a finite number: a minimum accuracy such as 0.9, or an allowed "
                          "loss such as {drop = 0.01} or {relative = 0.01}") from exc


def _parse_layers(path: Path, model: Any, layers: Any) -> Any:
    from panther.tuner import LayerConfig, TuningConfigs
    from panther.tuner.selection import SELECTOR_KEYS, select_layers

    if not isinstance(layers, list) or not layers or not all(isinstance(t, dict) for t in layers):
        raise ConfigError(path, "layers", "expected one or more [[layers]] tables",
                          'add [[layers]] with selector = {type = "Linear"} and params = "auto"')
    configs = TuningConfigs()
    for i, table in enumerate(layers):
        key = f"layers[{i}]"
        check_keys(path, key, table, LAYER_KEYS)
        if "selector" not in table:
            raise ConfigError(path, f"{key}.selector", "missing the layer selector",
                              'add selector = {type = "Linear"} (or a name, regex or list)')
        selector = table["selector"]
        if isinstance(selector, dict):
            check_keys(path, f"{key}.selector", selector, SELECTOR_KEYS)
        params = parse_param_space(path, f"{key}.params", table.get("params", "auto"))
        for flag in ("separate", "copy_weights"):
            if flag in table:
                expect(path, f"{key}.{flag}", table[flag], (bool,), "true or false")
        try:
            names = select_layers(model, selector)
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, f"{key}.selector", str(exc),
                              "change the selector: a module name, a regex matching whole names, "
                              'a list of those, or a table such as {type = "Linear"}') from exc
        _check_layers(path, i, model, names, table, params)
        try:
            configs.append(LayerConfig(selector, params, separate=table.get("separate", True),
                                       copy_weights=table.get("copy_weights", True)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(path, key, str(exc), "fix this [[layers]] table") from exc
    # What only the tables together can get wrong (a layer selected twice, two groups of
    # one name), by the tuner's own group forming.
    from panther.tuner.groups import form_groups

    try:
        form_groups(model, configs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, "layers", str(exc), "select each layer in one [[layers]] table only") from exc
    return configs


def load_tune_config(path: str | os.PathLike[str]) -> TuneSpec:
    """Parse and check a ``panther-tune tune`` TOML file; build the model and search.

    Raises:
        ConfigError: naming the file, the key and the fix, for anything wrong in the file.
    """
    path = Path(path)
    raw = _read_toml(path)
    check_keys(path, "", raw, list(TOP_KEYS))
    for required in ("model", "accuracy", "layers"):
        if required not in raw:
            raise ConfigError(path, required, "missing required key", f"add {required} = {TOP_KEYS[required]}")

    model = _build_model(path, raw)
    reference = copy.deepcopy(model).eval()
    accuracy_fn = build_function(path, "accuracy", raw["accuracy"], reference)
    speed_fn = build_function(path, "speed", raw["speed"], reference) if "speed" in raw else None

    threshold = None
    if "threshold" in raw:
        threshold = _parse_threshold(path, raw["threshold"])
        if speed_fn is None:
            raise ConfigError(path, "speed", "a threshold needs a speed function to maximise",
                              'add speed = {evaluator = "throughput", ...} or remove threshold')

    configs = _parse_layers(path, model, raw["layers"])
    from panther.tuner.settings import DEFAULT_N_TRIALS

    search, settings = build_search(path, raw.get("search"), DEFAULT_N_TRIALS)
    runs = raw.get("num_runs_per_param", 1)
    expect(path, "num_runs_per_param", runs, (int,), "a positive integer")
    if runs < 1:
        raise ConfigError(path, "num_runs_per_param", f"must be >= 1, got {runs}", "use 1 or more")
    output = raw.get("output")
    if output is not None:
        expect(path, "output", output, (str,), "a folder path")
    verbose = raw.get("verbose", False)
    expect(path, "verbose", verbose, (bool,), "true or false")
    speed = raw.get("speed")
    if isinstance(speed, dict):
        flags = [k for k in ("inverse", "negate") if speed.get(k) is True]
        speed_label = f"speed: {speed.get('evaluator')}" + (f" ({flags[0]})" if flags else "")
    else:
        speed_label = f"speed: {speed}"
    return TuneSpec(path, model, accuracy_fn, speed_fn, threshold, configs, search, settings,
                    runs, output, verbose, speed_label)
