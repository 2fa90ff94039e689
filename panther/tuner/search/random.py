"""Seeded random search (built-in plugin ``"random"``)."""

from __future__ import annotations

import random
from typing import Any

from panther.tuner.config import normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key

__all__ = ["RandomSearch"]

# Finite spaces up to this size are sampled by index without replacement; larger
# or continuous ones by rejection of repeats (collisions are rare there).
_INDEX_SAMPLING_LIMIT = 10_000_000
_MAX_REJECTIONS = 100


class RandomSearch(SearchAlgorithm):
    """Sample points uniformly (log-uniformly for ``log`` spaces) until ``n_trials`` are evaluated.

    Args:
        n_trials: evaluations to propose: results told with ``evaluated=False``
            (skipped or cached by the tuner) do not count, up to the proposal cap of
            ``PROPOSAL_CAP_FACTOR * n_trials`` proposals.
        seed: seed of the generator; the same seed gives the same sequence.

    On a finite space points are drawn without replacement and the search
    finishes early once every point has been proposed.
    """

    def __init__(self, n_trials: int = 50, seed: int | None = None) -> None:
        super().__init__()
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
        self.n_trials = n_trials
        self.seed = seed
        self._rng = random.Random(seed)
        self._order: list[int] | None = None
        self._grid: list[list[Any]] = []
        self._names: list[str] = []
        self._seen: set[Any] = set()
        self._size: int | None = None
        self._initialized = False

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start a search over ``param_space`` with a freshly seeded generator."""
        self.reset()
        self.param_space = normalize_param_space(param_space)
        self._names = list(self.param_space)
        self._size = finite_space_size(self.param_space)
        if self._size is not None and self._size <= _INDEX_SAMPLING_LIMIT:
            self._grid = [spec.values() for spec in self.param_space.values()]  # type: ignore[misc]
        # log-scaled parameters must be drawn through their own sampler to stay log-uniform.
        uses_log = any(getattr(spec, "log", False) for spec in self.param_space.values())
        if self._grid and not uses_log:
            # Enough indices for the proposal cap: unevaluated proposals don't use up n_trials.
            cap = self.proposal_cap() or self.n_trials
            self._order = self._rng.sample(range(self._size), min(cap, self._size))
        self._initialized = True

    def _decode(self, index: int) -> dict[str, Any]:
        # Mixed-radix decoding; the last parameter varies fastest.
        values = []
        for choices in reversed(self._grid):
            index, r = divmod(index, len(choices))
            values.append(choices[r])
        return dict(zip(self._names, reversed(values)))

    def get_next_params(self) -> dict[str, Any] | None:
        """A new random point, or ``None`` after ``n_trials`` evaluations or an exhausted space."""
        if not self._initialized:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        if self.is_finished():
            return None
        if self._order is not None:
            params = self._decode(self._order[self.n_proposed])
        else:
            for _ in range(_MAX_REJECTIONS):
                params = {n: s.sample(self._rng) for n, s in self.param_space.items()}
                if params_key(params) not in self._seen:
                    break
            else:
                if self._grid:  # nearly exhausted finite space: pick among the points left
                    left = [
                        p
                        for p in (self._decode(i) for i in range(self._size or 0))
                        if params_key(p) not in self._seen
                    ]
                    params = self._rng.choice(left)
            self._seen.add(params_key(params))
        self._count_proposal()
        return params

    def is_finished(self) -> bool:
        """Whether ``n_trials`` evaluations were told, the proposal cap was reached, or a
        finite space is exhausted (every point proposed)."""
        if not self._initialized:
            return False
        if self._budget_spent():
            return True
        if self._order is not None and self.n_proposed >= len(self._order):
            return True
        return self._size is not None and self.n_proposed >= self._size

    def reset(self) -> None:
        """Forget results and re-seed the generator."""
        super().reset()
        self._rng = random.Random(self.seed)
        self._order = None
        self._grid = []
        self._names = []
        self._seen = set()
        self._size = None
        self._initialized = False


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Register :class:`RandomSearch` as ``"random"``."""
    return {"random": RandomSearch}
