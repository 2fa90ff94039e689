"""Multi-fidelity accuracy evaluation: the evaluator contract and helpers.

An accuracy function may take a keyword argument ``fidelity``: a float in ``(0, 1]``,
the fraction of the validation data to evaluate on. The tuner then screens candidates on
a cheap fraction first and evaluates only the promising ones on all of it::

    def accuracy(model, fidelity: float = 1.0) -> float:
        xs, ys = take_fraction((x_val, y_val), fidelity)   # the first ceil(f * n) samples
        with torch.no_grad():
            return (model(xs).argmax(1) == ys).float().mean().item()

The contract:

* ``fidelity=1.0`` (or no argument) must mean the whole validation set, the same value as
  before: the threshold and every reported accuracy are at full fidelity.
* Lower fidelities should evaluate a fixed, *nested* subset (the first ``ceil(f * n)``
  samples, not a fresh random draw), so that screens are comparable with each other and
  with the original model screened at the same fidelity.
* The function is recognised by a parameter named ``fidelity`` in its signature, or by an
  attribute ``supports_fidelity = True`` (for callables whose signature hides it).

Screening only ever rejects: a candidate is dropped at low fidelity when its accuracy drop
there is far beyond the allowed drop (:func:`screen_rejects`), and everything the tuner keeps
is evaluated at full fidelity. A noisy screen therefore costs at most a missed candidate,
never a violated threshold.

Two strategies use the contract: the guided one screens its joint candidates (see
:mod:`panther.tuner.allocation`), and the classic one, with an Optuna backend, evaluates
each trial on a ladder of fidelities (``OptunaSearch(fidelities=(0.25,))``), reports each
intermediate result to the trial and stops the trials Optuna's pruner (or
:func:`screen_rejects`) prunes (see :mod:`panther.tuner.search_loop`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["supports_fidelity", "check_fidelity", "check_ladder", "take_fraction", "fraction_size",
           "screen_rejects", "SCREEN_SLACK"]

#: A screen at fidelity ``f`` rejects when the accuracy drop exceeds the allowed drop by
#: more than ``SCREEN_SLACK / sqrt(f)`` of it (a smaller sample is noisier: more slack).
SCREEN_SLACK = 1.0


def supports_fidelity(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` follows the fidelity contract (a ``fidelity`` parameter or the marker)."""
    marker = getattr(fn, "supports_fidelity", None)
    if marker is not None:
        return bool(marker)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("fidelity")
    return p is not None and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        inspect.Parameter.KEYWORD_ONLY)


def check_fidelity(fidelity: Any) -> float:
    """``fidelity`` as a float in ``(0, 1]``, or a ``ValueError`` saying what is allowed."""
    if isinstance(fidelity, bool) or not isinstance(fidelity, (int, float)):
        raise ValueError(f"fidelity must be a number in (0, 1], got {fidelity!r}")
    value = float(fidelity)
    if not (0.0 < value <= 1.0):
        raise ValueError(
            f"fidelity must be in (0, 1] (the fraction of the validation data), got {fidelity!r}")
    return value


def check_ladder(fidelities: Any) -> tuple[float, ...]:
    """``fidelities`` as a strictly increasing tuple of fractions in ``(0, 1)``, or a ``ValueError``.

    The ladder of intermediate fidelities a trial is evaluated on before the full one;
    each must be a distinct whole percentage (Optuna's steps are ``round(100 * f)``).
    """
    if isinstance(fidelities, (str, bytes)) or not isinstance(fidelities, Sequence):
        raise ValueError(f"fidelities must be a sequence of fractions in (0, 1), e.g. (0.25,); "
                         f"got {fidelities!r}")
    ladder = tuple(check_fidelity(f) for f in fidelities)
    if any(f >= 1.0 for f in ladder):
        raise ValueError(f"fidelities are the intermediate fractions, below 1 (the full "
                         f"evaluation always follows); got {fidelities!r}")
    steps = [round(100 * f) for f in ladder]
    if any(b <= a for a, b in zip(steps, steps[1:])) or (steps and steps[0] < 1):
        raise ValueError(f"fidelities must increase by at least 0.01 each, from 0.01; got {fidelities!r}")
    return ladder


def screen_rejects(base: float, accuracy: float, allowed_drop: float, fidelity: float) -> bool:
    """Whether a candidate is clearly infeasible from a screen at ``fidelity``.

    ``base`` is the original model's accuracy at the same fidelity, ``accuracy`` the
    candidate's, ``allowed_drop`` the full-fidelity drop the threshold allows. True only
    when the drop exceeds the allowed one by the noise slack (:data:`SCREEN_SLACK`); it only
    ever rejects, acceptance always takes a full evaluation.
    """
    scale = max(allowed_drop, 1e-3 * max(abs(base), 1e-12))
    return base - accuracy > scale * (1 + SCREEN_SLACK / math.sqrt(fidelity))


def fraction_size(n: int, fidelity: float) -> int:
    """``ceil(fidelity * n)`` items, at least one when ``n > 0``."""
    if n <= 0:
        return 0
    return max(1, min(n, math.ceil(check_fidelity(fidelity) * n - 1e-9)))


def take_fraction(data: Any, fidelity: float) -> Any:
    """The first ``ceil(fidelity * n)`` items of ``data`` (a nested, deterministic subset).

    ``data`` is a tensor (split on dim 0), a sequence (a list of batches: whole batches are
    kept), or a tuple/list of tensors of equal length (each sliced alike, e.g.
    ``(inputs, labels)``).
    """
    f = check_fidelity(fidelity)
    if isinstance(data, torch.Tensor):
        return data[: fraction_size(data.shape[0], f)]
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        lengths = {t.shape[0] for t in data}
        if len(lengths) != 1:
            raise ValueError(f"take_fraction: the tensors have different lengths {sorted(lengths)}")
        n = fraction_size(lengths.pop(), f)
        return tuple(t[:n] for t in data)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return data[: fraction_size(len(data), f)]
    raise TypeError(
        f"take_fraction needs a tensor, a tuple of tensors or a sequence, got {type(data).__name__}")
