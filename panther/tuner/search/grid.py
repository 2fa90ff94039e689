"""Exhaustive grid search over finite parameter spaces (built-in plugin ``"grid"``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from panther.tuner.config import ParamSpec, normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm, finite_space_size

__all__ = ["GridSearch", "grid_values"]


def grid_values(param_space: dict[str, ParamSpec], who: str = "GridSearch") -> dict[str, list[Any]]:
    """Every parameter's values in order; continuous ``Float`` spaces raise ``ValueError``."""
    grid = {}
    for name, spec in param_space.items():
        values = spec.values()
        if values is None:
            raise ValueError(
                f"{who} cannot enumerate parameter {name!r}: {spec!r} is continuous. "
                f"Give it a step (e.g. Float({spec.low}, {spec.high}, step=...)) or list the "
                "values, or use RandomSearch/OptunaSearch for continuous spaces"
            )
        grid[name] = values
    return grid


class GridSearch(SearchAlgorithm):
    """Try every combination of a finite space, in order (the first parameter varies slowest).

    ``Categorical`` and stepped ``Int``/``Float`` spaces are enumerated; a continuous
    ``Float`` raises ``ValueError`` at :meth:`initialize`. The search finishes after
    the last combination has been proposed; it has no ``n_trials`` (``None``), so
    whether a result was evaluated (``update(..., evaluated=...)``) does not change
    what it proposes. Bound the evaluations with the tuner's ``max_trials``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._iter: Iterator[tuple[Any, ...]] | None = None
        self._names: list[str] = []
        self._proposed = 0
        self._size = 0
        self._exhausted = False

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start enumerating ``param_space``."""
        self.reset()
        space = normalize_param_space(param_space)
        grid = grid_values(space)
        self.param_space = space
        self._names = list(grid)
        self._size = finite_space_size(space) or 0
        self._iter = itertools.product(*grid.values())

    def get_next_params(self) -> dict[str, Any] | None:
        """The next combination, or ``None`` once all have been proposed."""
        if self._iter is None:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        try:
            values = next(self._iter)
        except StopIteration:
            self._exhausted = True
            return None
        self._proposed += 1
        self._count_proposal()
        if self._proposed >= self._size:
            self._exhausted = True
        return dict(zip(self._names, values))

    def is_finished(self) -> bool:
        """Whether every combination has been proposed."""
        return self._exhausted

    @property
    def total(self) -> int:
        """The number of combinations in the grid (0 before :meth:`initialize`)."""
        return self._size

    def reset(self) -> None:
        """Forget the grid and the results."""
        super().reset()
        self._iter = None
        self._names = []
        self._proposed = 0
        self._size = 0
        self._exhausted = False


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Register :class:`GridSearch` as ``"grid"``."""
    return {"grid": GridSearch}
