"""Checks that keep a tuning-results manifest from doing more than rebuilding its layers.

A manifest (:mod:`panther.tuner.results`) is data from a file: it may name layers, their
layer types, parameters and seeds, and nothing else. These checks make sure that

* it cannot exhaust the parser (nesting depth is bounded, :func:`check_depth`);
* its fields have exactly the types they claim (``"false"`` is not a boolean,
  ``true`` is not a version number, :func:`strict_bool`);
* it applies only to the layers it was made from: recorded parameter shapes must match
  (:func:`module_shapes`, :func:`check_shapes`), so ``Linear(32, 64)`` results never
  build a layer for ``Linear(32, 48)``;
* its parameters stay within what the layer's dimensions allow
  (:func:`check_within_bounds`): a rank of ``10**9`` is refused before anything is
  allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = [
    "MAX_COST_GROWTH",
    "MAX_DEPTH",
    "ManifestError",
    "check_depth",
    "check_shapes",
    "check_within_bounds",
    "module_shapes",
    "strict_bool",
]

#: Deepest nesting of objects and lists a manifest may have (panther writes about 6).
MAX_DEPTH = 64
#: A configuration may cost at most this many times the original layer's parameters and
#: multiply-adds (or ``MIN_COST_ALLOWANCE``, whichever is larger): far beyond anything a
#: sketch that saves work needs, far below what exhausts memory.
MAX_COST_GROWTH = 64
MIN_COST_ALLOWANCE = 1 << 20


class ManifestError(ValueError):
    """A malformed or inapplicable manifest (a ``ValueError``, as the loaders always raised)."""


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`ManifestError` if ``value`` nests objects/lists deeper than ``limit``.

    Iterative, so a hostile depth cannot overflow the stack while being measured.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise ManifestError(
                f"invalid tuning-results manifest: nested deeper than {limit} levels; "
                "panther never writes such files"
            )
        stack.extend((child, depth + 1) for child in children)


def strict_bool(value: Any, field: str) -> bool:
    """``value`` if it is a JSON boolean, else :class:`ManifestError` (``"false"`` is a string)."""
    if not isinstance(value, bool):
        raise ManifestError(
            f"invalid tuning-results manifest: {field} must be true or false, got {value!r}"
        )
    return value


def module_shapes(module: nn.Module) -> dict[str, list[int]]:
    """The shapes of ``module``'s parameters and buffers, by name (what a manifest records)."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return {name: list(tensor.shape) for name, tensor in tensors}


def check_shapes(layer_name: str, recorded: Mapping[str, Any] | None, module: nn.Module) -> None:
    """Raise :class:`ManifestError` unless ``module`` has the ``recorded`` shapes.

    ``None`` (a manifest written before shapes were recorded) is accepted as before.
    """
    if recorded is None:
        return
    actual = module_shapes(module)
    if dict(recorded) != actual:
        differ = sorted(k for k in {*recorded, *actual} if recorded.get(k) != actual.get(k))
        detail = ", ".join(f"{k}: tuned {recorded.get(k)} here {actual.get(k)}" for k in differ[:4])
        raise ManifestError(
            f"layer {layer_name!r} has other shapes than the layer these results were tuned on "
            f"({detail}); results apply only to the same architecture"
        )


def check_within_bounds(layer_type: Any, original: nn.Module, params: dict[str, Any],
                        layer_name: str) -> None:
    """Raise :class:`ManifestError` if ``params`` would make ``original``'s sketch absurdly big.

    Uses the layer type's cost model, which is arithmetic: nothing is allocated. The
    parameters are validated first (types and ranges), so the cost model sees sane input.
    """
    try:
        layer_type.validate_params(original, params)
        dense = layer_type.cost(original)
        sketch = layer_type.cost(original, params)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"layer {layer_name!r}: {exc}") from exc
    for what, before, after in (("parameters", dense.params, sketch.params),
                                ("multiply-adds", dense.macs, sketch.macs)):
        allowed = max(MAX_COST_GROWTH * before, MIN_COST_ALLOWANCE)
        if after > allowed:
            shown = {k: v for k, v in params.items() if k != "seed"}
            raise ManifestError(
                f"layer {layer_name!r}: the recorded parameters {shown} would need {after:,} "
                f"{what}, more than {MAX_COST_GROWTH}x the original layer's {before:,}; they do "
                "not fit this layer's dimensions (a corrupt or foreign manifest)"
            )
