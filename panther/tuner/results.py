"""Tuning results: trial records, the chosen configuration, and a safe on-disk manifest.

A :class:`TuningResults` holds everything a tuning run produced:

* ``trials``: one record (a plain dict) per trial, the rows of
  :meth:`TuningResults.to_dataframe`;
* ``groups``: per layer group, its layers, their layer types and the search winner;
* ``selection``: per layer, the configuration :meth:`TuningResults.apply` builds
  (layer type name, params, sketch seed, ``copy_weights``), i.e. the verified
  combination chosen after tuning;
* ``info``: the baseline and final verified accuracy/speed and run metadata.

Saved results are a JSON manifest whatever the file suffix (``.pkl`` included).
Loading never unpickles or executes anything from the file: it only parses JSON
and checks its structure. A loaded result rebuilds the tuned model exactly on a
fresh instance of the same architecture with the same original weights, since
each sketched layer is rebuilt from its recorded layer type, params and seed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from panther.tuner.manifest import (
    check_depth,
    check_shapes,
    check_within_bounds,
    module_shapes,
    strict_bool,
)

__all__ = [
    "TRIAL_STATUSES",
    "LayerChoice",
    "TuningResults",
    "load_tuning_results",
    "build_layer",
    "get_submodule",
    "module_device_dtype",
    "set_submodule",
]

FORMAT_NAME = "panther-tuning-results"
FORMAT_VERSION = 1

#: Every status a trial record can have.
TRIAL_STATUSES = ("ok", "rejected", "failed", "skipped", "cached", "predicted", "pruned")

# Columns every DataFrame has, in this order; parameter columns come after layer_name.
_LEADING_COLUMNS = ("layer_name",)
_TRAILING_COLUMNS = (
    "score",
    "accuracy",
    "speed",
    "trial_number",
    "status",
    "error",
    "wall_time_s",
    "speed_median",
    "predicted_error",
    "calibration_error",
)


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """The submodule of ``model`` at the dotted ``path`` (``""`` is the model itself)."""
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(_no_submodule(model, path)) from exc


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` by ``module`` (on its parent, by attribute)."""
    if path == "":
        raise ValueError("cannot replace the root module; select a submodule by name")
    parent_path, _, attr = path.rpartition(".")
    parent = get_submodule(model, parent_path)
    # Writing the parent's child table handles Sequential/ModuleList/ModuleDict children
    # too (they register numbered or keyed children under string names), and never turns
    # a child into a plain attribute the way a failed setattr could.
    if attr not in parent._modules:
        raise ValueError(_no_submodule(model, path))
    parent._modules[attr] = module


def module_device_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of ``module``'s first floating tensor (``None`` if unknown)."""
    tensors = [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return (tensors[0].device if tensors else None), None


def build_layer(layer_type: Any, original: nn.Module, params: dict[str, Any],
                copy_weights: bool = True) -> nn.Module:
    """``layer_type.build(original, params)``, placed like ``original``.

    The result is moved to the original's device and floating dtype and put in its
    train/eval mode, so a third-party layer type that forgets to cannot change them.
    """
    device, dtype = module_device_dtype(original)
    seed = params.get("seed")
    if seed is None:
        module = layer_type.build(original, params, copy_weights=copy_weights)
    else:
        # Everything random in the build (fresh weights with copy_weights=False, a third-party
        # type's own draws) then follows the recorded seed, so every rebuild is the same layer.
        cuda = device is not None and device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else []):
            # Seed exactly the generators fork_rng restores: torch.manual_seed would also
            # reseed (and leave changed) every other device's generator, and costs ~2 ms
            # per call in lazy-initialisation bookkeeping when CUDA is not initialised.
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            module = layer_type.build(original, params, copy_weights=copy_weights)
    if device is not None:
        module = module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    module.train(original.training)
    return module


def _no_submodule(model: nn.Module, path: str) -> str:
    import difflib

    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return (f"the model ({type(model).__name__}) has no submodule named {path!r}{hint}. Layer "
            "names are those of model.named_modules(); results apply only to the same architecture")


@dataclass
class LayerChoice:
    """How to rebuild one tuned layer: what :meth:`TuningResults.apply` needs.

    Attributes:
        layer_name: dotted module path in the model.
        layer_type: name of the registered layer type that builds it.
        module_class: class name of the original module (checked when applying).
        params: the layer type's parameters (without ``seed``).
        seed: the seed of the layer's random sketches, or ``None``.
        copy_weights: whether the sketch was initialised from the original weights.
        shapes: the original module's parameter and buffer shapes (checked when applying;
            ``None`` in manifests written before they were recorded).
    """

    layer_name: str
    layer_type: str
    module_class: str
    params: dict[str, Any]
    seed: int | None = None
    copy_weights: bool = True
    shapes: dict[str, list[int]] | None = None

    @classmethod
    def for_module(cls, layer_name: str, layer_type: str, module: nn.Module, params: dict[str, Any],
                   seed: int | None = None, copy_weights: bool = True) -> LayerChoice:
        """The choice for ``module``, recording its class and shapes so it applies to no other."""
        return cls(layer_name=layer_name, layer_type=layer_type, module_class=type(module).__name__,
                   params=dict(params), seed=seed, copy_weights=copy_weights,
                   shapes=module_shapes(module))

    def build_params(self) -> dict[str, Any]:
        """The params passed to ``LayerType.build`` (with the seed when known)."""
        out = dict(self.params)
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = {
            "layer_name": self.layer_name,
            "layer_type": self.layer_type,
            "module_class": self.module_class,
            "params": dict(self.params),
            "seed": self.seed,
            "copy_weights": self.copy_weights,
        }
        if self.shapes is not None:
            out["shapes"] = {k: list(v) for k, v in self.shapes.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerChoice:
        """Inverse of :meth:`to_dict`, checking field types."""
        _require(isinstance(data, Mapping), "a layer choice must be an object")
        for key in ("layer_name", "layer_type", "module_class"):
            _require(isinstance(data.get(key), str), f"layer choice field {key!r} must be a string")
        params = data.get("params")
        _require(isinstance(params, Mapping), "layer choice 'params' must be an object")
        seed = data.get("seed")
        _require(seed is None or (isinstance(seed, int) and not isinstance(seed, bool)),
                 "layer choice 'seed' must be an integer or null")
        shapes = data.get("shapes")
        _require(shapes is None or (isinstance(shapes, Mapping) and all(
            isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
            for v in shapes.values())), "layer choice 'shapes' must map names to lists of sizes")
        return cls(
            layer_name=data["layer_name"],
            layer_type=data["layer_type"],
            module_class=data["module_class"],
            params={str(k): _check_scalar(v) for k, v in params.items()},
            seed=seed,
            copy_weights=strict_bool(data.get("copy_weights", True), "layer choice 'copy_weights'"),
            shapes=None if shapes is None else {str(k): list(v) for k, v in shapes.items()},
        )


@dataclass
class TuningResults:
    """Everything a tuning run produced; see the module docstring."""

    trials: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    selection: dict[str, LayerChoice] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # ---- views -------------------------------------------------------------------------
    def param_names(self) -> list[str]:
        """All parameter names that appear in any trial, in first-seen order."""
        names: list[str] = []
        for row in self.trials:
            for name in row.get("params", {}):
                if name not in names:
                    names.append(name)
        return names

    def to_dataframe(self) -> Any:
        """One row per trial: ``layer_name``, one column per param, ``score``, ``accuracy``,
        ``speed``, ``trial_number``, ``status``, ``error``, ``wall_time_s``, ``speed_median``."""
        import pandas as pd

        names = self.param_names()
        columns = [*_LEADING_COLUMNS, *names, *_TRAILING_COLUMNS]
        rows = []
        for row in self.trials:
            flat = {"layer_name": row["layer_name"]}
            params = row.get("params", {})
            for name in names:
                flat[name] = params.get(name)
            for col in _TRAILING_COLUMNS:
                value = row.get(col)
                if col in ("accuracy", "speed", "wall_time_s", "speed_median", "predicted_error",
                           "calibration_error") and value is None:
                    value = math.nan
                flat[col] = value
            rows.append(flat)
        df = pd.DataFrame(rows, columns=columns)
        if len(df):
            df["score"] = df["score"].astype(float)
        return df

    def best_params(self) -> dict[str, dict[str, Any]]:
        """Per layer, the search winner: ``{"params": dict | None, "score": float}``."""
        out: dict[str, dict[str, Any]] = {}
        for summary in self.groups.values():
            best = summary.get("best_params")
            score = summary.get("best_score")
            for layer in summary["layers"]:
                out[layer] = {
                    "params": None if best is None else dict(best),
                    "score": -math.inf if score is None else float(score),
                }
        return out

    # ---- applying ----------------------------------------------------------------------
    def apply(self, model: nn.Module, inplace: bool = False) -> nn.Module:
        """Build :attr:`selection` into ``model`` (a deep copy unless ``inplace``) and return it.

        Each layer is rebuilt by its recorded layer type with its recorded params and
        seed, so applying to a fresh instance of the architecture with the same
        original weights reproduces the tuned model's outputs exactly.
        """
        from panther.tuner import plugins

        if not isinstance(model, nn.Module):
            raise TypeError(f"apply() needs a torch.nn.Module, got {type(model).__name__}")
        if inplace:
            target = model
        else:
            # The layers about to be replaced are not copied: the copy shares them until
            # their sketched replacements (built from them, read-only) are swapped in, so
            # applying costs a copy of the rest of the model only.
            memo: dict[int, Any] = {}
            for name in self.selection:
                try:
                    original = get_submodule(model, name)
                except ValueError:
                    continue  # reported below, on the copy
                memo[id(original)] = original
            target = copy.deepcopy(model, memo)
        # Build everything before swapping anything in, so a bad manifest (or a failing
        # build) leaves an in-place model untouched.
        built = {}
        for name, choice in self.selection.items():
            original = get_submodule(target, name)
            if type(original).__name__ != choice.module_class:
                raise ValueError(
                    f"layer {name!r} is a {type(original).__name__} in this model but the results "
                    f"were tuned on a {choice.module_class}; apply them to the same architecture"
                )
            check_shapes(name, choice.shapes, original)
            layer_type = plugins.get_layer_type(choice.layer_type)
            check_within_bounds(layer_type, original, choice.build_params(), name)
            built[name] = build_layer(layer_type, original, choice.build_params(), choice.copy_weights)
        for name, module in built.items():
            set_submodule(target, name, module)
        return target

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats are encoded so the file is strict JSON)."""
        return _encode(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "info": self.info,
                "groups": self.groups,
                "selection": {k: v.to_dict() for k, v in self.selection.items()},
                "trials": _compact_cached(_encode(self.trials)),
            }
        )

    @classmethod
    def from_dict(cls, data: Any) -> TuningResults:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on anything malformed."""
        _require(isinstance(data, Mapping), "the manifest must be a JSON object")
        _require(data.get("format") == FORMAT_NAME,
                 f"not a panther tuning-results manifest (format is {data.get('format')!r})")
        version = data.get("version")
        _require(isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= FORMAT_VERSION,
                 f"unsupported manifest version {version!r} (this panther reads 1 to {FORMAT_VERSION})")
        check_depth(data)
        trials = data.get("trials", [])
        _require(isinstance(trials, list) and all(isinstance(t, dict) for t in trials),
                 "'trials' must be a list of objects")
        try:
            expanded = _expand_cached(trials)
        except TypeError as exc:  # e.g. a list where panther writes a name or a trial number
            raise ValueError(f"invalid tuning-results manifest: malformed cached trial rows ({exc})") from exc
        data = _decode({**data, "trials": expanded})
        trials = data.get("trials", [])
        groups = data.get("groups", {})
        selection = data.get("selection", {})
        info = data.get("info", {})
        _require(isinstance(groups, dict), "'groups' must be an object")
        for key, summary in groups.items():
            _require(isinstance(summary, dict) and isinstance(summary.get("layers"), list),
                     f"group {key!r} must be an object with a 'layers' list")
        _require(isinstance(selection, dict), "'selection' must be an object")
        _require(isinstance(info, dict), "'info' must be an object")
        for key, choice in selection.items():
            _require(isinstance(choice, Mapping) and choice.get("layer_name") == key,
                     f"selection key {key!r} disagrees with its layer_name "
                     f"{choice.get('layer_name') if isinstance(choice, Mapping) else choice!r}")
        for row in trials:
            _require(isinstance(row.get("layer_name"), str), "each trial needs a 'layer_name'")
            _require(isinstance(row.get("params", {}), dict), "trial 'params' must be an object")
        return cls(
            trials=trials,
            groups=groups,
            selection={k: LayerChoice.from_dict(v) for k, v in selection.items()},
            info=info,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON manifest to ``path`` (any suffix; the content is always JSON)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_json_default)
        tmp = f"{os.fspath(path)}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                # On disk before the rename, so a power loss cannot leave an empty manifest.
                os.fsync(fh.fileno())
            # Atomic replace: a crash while saving never leaves a truncated manifest behind.
            os.replace(tmp, path)
        except BaseException:
            # A full disk or an interrupt: the previous manifest stays, and no half-written
            # temporary file is left next to it.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TuningResults:
        """Read a manifest written by :meth:`save`. Never unpickles or runs code."""
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:1] == b"\x80":
            raise ValueError(
                f"{os.fspath(path)!r} looks like a pickle file; panther never loads pickles "
                "(they can run code). Re-save the results with SKAutoTuner.save_tuning_results()."
            )
        try:
            data = json.loads(raw.decode("utf-8"))
        except RecursionError as exc:  # nesting deeper than the parser's stack
            raise ValueError(
                f"invalid tuning-results manifest {os.fspath(path)!r}: nested too deeply to be one "
                "panther wrote"
            ) from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{os.fspath(path)!r} is not a panther tuning-results manifest (JSON): {exc}"
            ) from exc
        return cls.from_dict(data)


def load_tuning_results(path: str | os.PathLike[str]) -> TuningResults:
    """Load results saved by ``SKAutoTuner.save_tuning_results`` (safe: JSON only).

    Apply them to a fresh model with ``load_tuning_results(path).apply(model)``.
    """
    return TuningResults.load(path)


# ---- helpers ------------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"invalid tuning-results manifest: {message}")


def _check_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_check_scalar(v) for v in value]
    raise ValueError(f"invalid tuning-results manifest: unsupported parameter value {value!r}")


_FLOAT_TAG = "__float__"
# A cached trial repeats its source trial's results; in the file it keeps only what
# differs and lists the keys it shares with the source under this key.
_SHARED_TAG = "shared_with_source"
_SHAREABLE = ("accuracy", "speed", "seeds", "error", "told", "constraint", "eval_time_s",
              "speed_median")


def _compact_cached(trials: list[Any]) -> list[Any]:
    """Drop from each cached row the values equal to its source row's (lossless, see :func:`_expand_cached`)."""
    sources = {(r.get("layer_name"), r.get("trial_number")): r for r in trials
               if isinstance(r, dict) and r.get("status") != "cached"}
    out = []
    for row in trials:
        source = None
        if isinstance(row, dict) and row.get("status") == "cached" and _SHARED_TAG not in row:
            source = sources.get((row.get("layer_name"), row.get("cached_from")))
        if source is None:
            out.append(row)
            continue
        shared = [k for k in _SHAREABLE if k in row and k in source and row[k] == source[k]]
        compact = {k: v for k, v in row.items() if k not in shared}
        if shared:
            compact[_SHARED_TAG] = shared
        out.append(compact)
    return out


def _expand_cached(trials: list[Any]) -> list[Any]:
    """Inverse of :func:`_compact_cached`: put the shared values back from the source rows."""
    if not any(isinstance(r, dict) and _SHARED_TAG in r for r in trials):
        return trials
    sources = {(r.get("layer_name"), r.get("trial_number")): r for r in trials
               if isinstance(r, dict) and r.get("status") != "cached"}
    out = []
    for row in trials:
        if not (isinstance(row, dict) and _SHARED_TAG in row):
            out.append(row)
            continue
        shared = row[_SHARED_TAG]
        source = sources.get((row.get("layer_name"), row.get("cached_from")))
        _require(isinstance(shared, list) and source is not None and all(k in source for k in shared),
                 f"cached trial {row.get('trial_number')!r} refers to a missing source trial")
        full = {k: v for k, v in row.items() if k != _SHARED_TAG}
        full.update({k: source[k] for k in shared if k in _SHAREABLE})
        out.append(full)
    return out


def _encode(value: Any) -> Any:
    """Make ``value`` strict-JSON-ready: non-finite floats become tagged objects."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {_FLOAT_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _encode(value.item())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _encode(value.item())
        except (TypeError, ValueError):
            pass
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_FLOAT_TAG}:
            tag = value[_FLOAT_TAG]
            _require(tag in ("nan", "inf", "-inf"), f"bad float tag {tag!r}")
            return float(tag)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    # Anything not representable (user objects in params) is stored as its repr:
    # the manifest stays loadable, and loading never reconstructs objects.
    return repr(value)
