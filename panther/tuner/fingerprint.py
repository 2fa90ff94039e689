"""Fingerprints of a tuning run: which model, search space and evaluation settings it is for.

A stored study records the fingerprint of the run that created it (a study user
attribute, :data:`FINGERPRINT_ATTR`). Resuming it, or joining it as a worker, with a
different model (class, parameter names and shapes, weights), a different search space or
different evaluation settings would silently mix results of two experiments, so
:func:`check_fingerprint` refuses and names what differs.

The budget (``n_trials``, ``max_trials``, ``time_budget_s``) and display options are not
part of the fingerprint: a run may be resumed with a larger budget.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import torch
from torch import nn

__all__ = [
    "FINGERPRINT_ATTR",
    "FingerprintMismatch",
    "model_fingerprint",
    "tuner_fingerprint",
    "group_fingerprint",
    "fingerprint_differences",
    "check_fingerprint",
]

#: Study user attribute holding the fingerprint.
FINGERPRINT_ATTR = "panther_fingerprint"
_VERSION = 1
# Parameter/buffer shapes recorded one by one (for messages) up to this many entries; a
# larger model keeps only their digest.
_MAX_LISTED = 2000
_EVALUATION_KEYS = ("accuracy_eval_func", "optimization_eval_func", "accuracy_threshold",
                    "accuracy_tolerance", "tolerance_mode", "multi_objective",
                    "num_runs_per_param", "skip_costlier", "speed_precheck", "dedupe")


class FingerprintMismatch(ValueError):
    """A stored study belongs to a different model, search space or evaluation settings."""


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Class, parameter and buffer names/shapes/dtypes, and a digest of the weights.

    Tensors on meta devices (no data) contribute their shape only.
    """
    state = model.state_dict()
    shapes = {name: [list(t.shape), str(t.dtype).removeprefix("torch.")]
              for name, t in state.items() if isinstance(t, torch.Tensor)}
    weights = hashlib.sha256()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            continue
        weights.update(name.encode())
        data = tensor.detach().contiguous().reshape(-1).cpu()
        weights.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    cls = type(model)
    out: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "n_tensors": len(shapes),
        "shapes_digest": _digest(shapes),
        "weights_digest": weights.hexdigest()[:16],
    }
    if len(shapes) <= _MAX_LISTED:
        out["shapes"] = shapes
    return out


def _callable_id(fn: Any) -> str | None:
    """What can be compared of an evaluation function across processes.

    A built-in evaluator (``panther.tuner.evaluators``) is recorded by its name and
    options. A plain function only as ``"function"``: its name says little (lambdas,
    notebooks, a script run as ``__main__`` in one process and imported in another), and
    refusing a resume for a renamed function would be wrong more often than right.
    """
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return f"partial({_callable_id(fn.func)}, args={fn.args!r}, kwargs={sorted(fn.keywords)})"
    text = repr(fn)
    if type(fn).__repr__ is not object.__repr__ and " at 0x" not in text:
        return text  # e.g. an Evaluator: its name and options
    return "function"


def tuner_fingerprint(tuner: Any) -> dict[str, Any]:
    """The fingerprint of an ``SKAutoTuner``: its model, every group's space, its evaluation."""
    space = {}
    for group in tuner.groups:
        space[group.key] = {
            "layers": list(group.layers),
            "layer_types": {n: group.layer_types[n].name for n in group.layers},
            "space": {k: repr(v) for k, v in group.space.items()},
            "copy_weights": bool(group.copy_weights),
        }
    evaluation = {}
    for key in _EVALUATION_KEYS:
        value = getattr(tuner, key, None)
        evaluation[key] = _callable_id(value) if key.endswith("_func") else value
    return {"version": _VERSION, "model": model_fingerprint(tuner.model), "space": space,
            "evaluation": evaluation}


def group_fingerprint(fingerprint: dict[str, Any], key: str) -> dict[str, Any]:
    """The part of a run fingerprint one group's study depends on (its own space only)."""
    return {**fingerprint, "space": {key: fingerprint["space"][key]}}


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _model_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old.get("class") != new.get("class"):
        out.append(f"model class: stored {old.get('class')}, now {new.get('class')}")
    if old.get("shapes_digest") != new.get("shapes_digest"):
        a, b = old.get("shapes"), new.get("shapes")
        if isinstance(a, dict) and isinstance(b, dict):
            gone = sorted(set(a) - set(b))
            added = sorted(set(b) - set(a))
            changed = [f"{k} {tuple(a[k][0])} {a[k][1]} -> {tuple(b[k][0])} {b[k][1]}"
                       for k in a if k in b and a[k] != b[k]]
            if gone:
                out.append(f"model parameters missing now: {_first(gone)}")
            if added:
                out.append(f"model parameters not in the stored model: {_first(added)}")
            if changed:
                out.append(f"model parameter shapes/dtypes: {_first(changed)}")
        if not out:
            out.append("model parameter names/shapes differ")
    elif old.get("weights_digest") != new.get("weights_digest"):
        out.append(f"model weights (digest {old.get('weights_digest')} stored, "
                   f"{new.get('weights_digest')} now): the same architecture with other weights")
    return out


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between a stored and a current fingerprint (empty: same)."""
    out = _model_differences(old.get("model") or {}, new.get("model") or {})
    a, b = old.get("space") or {}, new.get("space") or {}
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"layer group {key!r} is in the stored run but not in this config")
        elif key not in a:
            out.append(f"layer group {key!r} is new in this config")
        elif a[key] != b[key]:
            parts = [f"{field} {a[key].get(field)!r} -> {b[key].get(field)!r}"
                     for field in ("layers", "layer_types", "space", "copy_weights")
                     if a[key].get(field) != b[key].get(field)]
            out.append(f"search space of group {key!r}: {'; '.join(parts)}")
    ea, eb = old.get("evaluation") or {}, new.get("evaluation") or {}
    for key in sorted(set(ea) | set(eb)):
        if ea.get(key) != eb.get(key):
            out.append(f"evaluation setting {key}: stored {ea.get(key)!r}, now {eb.get(key)!r}")
    return out


def check_fingerprint(stored: Any, current: dict[str, Any], where: str) -> None:
    """Raise :class:`FingerprintMismatch` when ``stored`` (if any) differs from ``current``.

    Args:
        stored: the fingerprint read from the study (``None``: a study without one).
        current: this run's fingerprint.
        where: what holds ``stored``, for the message (e.g. ``"study 'panther/fc1' in ..."``).
    """
    if not isinstance(stored, dict):
        return
    diffs = fingerprint_differences(stored, current)
    if diffs:
        listed = "\n  - ".join(diffs)
        raise FingerprintMismatch(
            f"{where} was made for a different model or config:\n  - {listed}\n"
            "Resuming or joining it would mix results of two experiments. Use the original "
            "model and config to continue it, or another study_name (or storage) for this one.")
