"""Exhaustive grid search over finite parameter spaces (built-in plugin ``"grid"``)."""

from __future__ import annotations

from typing import Any

from panther.tuner.config import ParamSpec, normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm, finite_space_size

__all__ = ["GridSearch", "grid_values"]


def _check_finite(param_space: dict[str, ParamSpec], who: str) -> None:
    for name, spec in param_space.items():
        if spec.size() is None:
            raise ValueError(
                f"{who} cannot enumerate parameter {name!r}: {spec!r} is continuous. "
                f"Give it a step (e.g. Float({spec.low}, {spec.high}, step=...)) or list the "
                "values, or use RandomSearch/OptunaSearch for continuous spaces"
            )


def grid_values(param_space: dict[str, ParamSpec], who: str = "GridSearch") -> dict[str, list[Any]]:
    """Every parameter's values in order; continuous ``Float`` spaces raise ``ValueError``."""
    _check_finite(param_space, who)
    return {name: spec.values() for name, spec in param_space.items()}  # type: ignore[misc]


class GridSearch(SearchAlgorithm):
    """Try every combination of a finite space, in order (the first parameter varies slowest).

    ``Categorical`` and stepped ``Int``/``Float`` spaces are enumerated lazily (a
    combination is computed from its index, so a huge grid starts at once); a
    continuous ``Float`` raises ``ValueError`` at :meth:`initialize`. The search
    finishes after the last combination has been proposed; it has no ``n_trials``
    (``None``), so whether a result was evaluated (``update(..., evaluated=...)``)
    does not change what it proposes. Bound the evaluations with the tuner's
    ``max_trials``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._specs: list[tuple[str, ParamSpec]] = []
        self._next = 0
        self._size = 0
        self._initialized = False

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start enumerating ``param_space``."""
        self.reset()
        space = normalize_param_space(param_space)
        _check_finite(space, "GridSearch")
        self.param_space = space
        self._specs = list(space.items())
        self._size = finite_space_size(space) or 0
        self._initialized = True

    def ask(self) -> dict[str, Any] | None:
        """The next combination, or ``None`` once all have been proposed."""
        if not self._initialized:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        if self._next >= self._size:
            return None
        index, self._next = self._next, self._next + 1
        # Mixed-radix decoding; the last parameter varies fastest.
        values: dict[str, Any] = {}
        for name, spec in reversed(self._specs):
            index, r = divmod(index, spec.size())  # type: ignore[operator]
            values[name] = spec.value_at(r)
        return {name: values[name] for name, _ in self._specs}

    def exhausted(self) -> bool:
        """Whether every combination has been proposed."""
        return self._initialized and self._next >= self._size

    @property
    def total(self) -> int:
        """The number of combinations in the grid (0 before :meth:`initialize`)."""
        return self._size

    def reset(self) -> None:
        """Forget the grid and the results."""
        super().reset()
        self._specs = []
        self._next = 0
        self._size = 0
        self._initialized = False


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Register :class:`GridSearch` as ``"grid"``."""
    return {"grid": GridSearch}
