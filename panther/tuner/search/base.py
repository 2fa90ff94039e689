"""The interface every search algorithm implements.

A search proposes parameter dicts one at a time and learns from their scores
(higher is better). The tuner drives it like this::

    search.initialize(space)
    while (params := search.get_next_params()) is not None:
        search.update(params, score, constraint=...)

Built-in backends and third-party plugins subclass :class:`SearchAlgorithm`
and are registered by name through the ``panther_search_algorithms`` hook.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from typing import Any

from panther.tuner.config import ParamSpec

__all__ = ["SearchAlgorithm", "finite_space_size", "params_key"]


def finite_space_size(param_space: dict[str, ParamSpec]) -> int | None:
    """How many distinct points ``param_space`` has, or ``None`` if a parameter is continuous."""
    size = 1
    for spec in param_space.values():
        values = spec.values()
        if values is None:
            return None
        size *= len(values)
    return size


def params_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable identity of a parameter dict (``repr`` of values, so lists and floats work).

    Integral floats and ints compare equal (``2.0`` and ``2``), matching how
    samplers sometimes hand back stepped values.
    """

    def norm(v: Any) -> str:
        if isinstance(v, float) and math.isfinite(v) and v == int(v):
            return repr(int(v))
        if isinstance(v, float):
            return repr(round(v, 12))
        return repr(v)

    return tuple(sorted((str(k), norm(v)) for k, v in params.items()))


class SearchAlgorithm(ABC):
    """Base class of search algorithms.

    Subclasses implement :meth:`initialize`, :meth:`get_next_params` and
    :meth:`update`; the base keeps the best score and the trial history.
    """

    def __init__(self) -> None:
        self.param_space: dict[str, ParamSpec] = {}
        self.history: list[tuple[dict[str, Any], float]] = []
        self._best_params: dict[str, Any] | None = None
        self._best_score: float | None = None

    @abstractmethod
    def initialize(self, param_space: dict[str, ParamSpec]) -> None:
        """Start a new search over ``param_space`` (``{name: ParamSpec}``)."""

    @abstractmethod
    def get_next_params(self) -> dict[str, Any] | None:
        """The next parameters to evaluate, or ``None`` when the search is finished."""

    def update(self, params: dict[str, Any], score: float, constraint: float | None = None) -> None:
        """Report the ``score`` of ``params`` (higher is better; always finite).

        ``constraint`` is the accuracy shortfall (``<= 0`` means feasible) for
        backends that can model constraints; others can ignore it, since the tuner
        already grades infeasible scores below every feasible one.
        """
        self.history.append((dict(params), float(score)))
        if constraint is not None and constraint > 0:
            return
        if self._best_score is None or score > self._best_score:
            self._best_score = float(score)
            self._best_params = dict(params)

    def report_failure(self, params: dict[str, Any], error: str | None = None) -> None:
        """Tell the search that evaluating ``params`` failed (optional for backends).

        The default does nothing, so a failed point may be proposed again; backends
        with a trial log (Optuna) record it as failed.
        """
        return None

    def get_best_params(self) -> dict[str, Any] | None:
        """The best feasible parameters seen so far, or ``None``."""
        return None if self._best_params is None else dict(self._best_params)

    def get_best_score(self) -> float | None:
        """The best feasible score seen so far, or ``None``."""
        return self._best_score

    @property
    def best_params(self) -> dict[str, Any] | None:
        """Alias of :meth:`get_best_params`."""
        return self.get_best_params()

    @property
    def best_score(self) -> float | None:
        """Alias of :meth:`get_best_score`."""
        return self.get_best_score()

    @abstractmethod
    def is_finished(self) -> bool:
        """Whether no further parameters will be proposed."""

    @property
    def finished(self) -> bool:
        """Alias of :meth:`is_finished`."""
        return self.is_finished()

    def reset(self) -> None:
        """Forget all state so :meth:`initialize` can start afresh."""
        self.param_space = {}
        self.history = []
        self._best_params = None
        self._best_score = None

    def spawn(self, key: str) -> SearchAlgorithm:
        """A fresh search with the same settings, for the layer group named ``key``.

        The tuner runs one search per layer group and calls this on the object the
        user passed. Backends with external state (an Optuna study name, a storage)
        override it to keep each group's state apart.
        """
        child = copy.deepcopy(self)
        child.reset()
        return child
