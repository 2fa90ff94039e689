"""Seeded random search (built-in plugin ``"random"``)."""

from __future__ import annotations

import random
from typing import Any

from panther.tuner.config import ParamSpec, normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key
from panther.tuner.settings import DEFAULT_N_TRIALS

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

    def __init__(self, n_trials: int = DEFAULT_N_TRIALS, seed: int | None = None) -> None:
        super().__init__()
        self.n_trials = self.checked_n_trials(n_trials)
        self.seed = seed
        self._init_state()

    def _init_state(self) -> None:
        self._rng = random.Random(self.seed)
        self._order: list[int] | None = None
        self._specs: list[tuple[str, ParamSpec]] = []
        self._seen: set[Any] = set()
        self._size: int | None = None
        self._initialized = False

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start a search over ``param_space`` with a freshly seeded generator."""
        self.reset()
        self.param_space = normalize_param_space(param_space)
        self._specs = list(self.param_space.items())
        self._size = finite_space_size(self.param_space)
        # log-scaled parameters must be drawn through their own sampler to stay log-uniform.
        uses_log = any(getattr(spec, "log", False) for spec in self.param_space.values())
        if self._size is not None and self._size <= _INDEX_SAMPLING_LIMIT and not uses_log:
            # Enough indices for the proposal cap: unevaluated proposals don't use up n_trials.
            cap = self.proposal_cap() or self.n_trials
            self._order = self._rng.sample(range(self._size), min(cap, self._size))
        self._initialized = True

    def _decode(self, index: int) -> dict[str, Any]:
        # Mixed-radix decoding; the last parameter varies fastest.
        values: dict[str, Any] = {}
        for name, spec in reversed(self._specs):
            index, r = divmod(index, spec.size())  # type: ignore[operator]
            values[name] = spec.value_at(r)
        return {name: values[name] for name, _ in self._specs}

    def ask(self) -> dict[str, Any] | None:
        """A new random point, or ``None`` once a finite space is exhausted."""
        if not self._initialized:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        if self.exhausted():
            return None
        if self._order is not None:
            return self._decode(self._order[self.n_proposed])
        for _ in range(_MAX_REJECTIONS):
            params = {n: s.sample(self._rng) for n, s in self._specs}
            if params_key(params) not in self._seen:
                break
        else:
            if self._size is not None and self._size <= _INDEX_SAMPLING_LIMIT:
                # Nearly exhausted finite space: pick among the points left.
                left = [p for p in map(self._decode, range(self._size))
                        if params_key(p) not in self._seen]
                params = self._rng.choice(left)
        self._seen.add(params_key(params))
        return params

    def exhausted(self) -> bool:
        """Whether every point of a finite space has been proposed."""
        if not self._initialized:
            return False
        if self._order is not None and self.n_proposed >= len(self._order):
            return True
        return self._size is not None and self.n_proposed >= self._size

    def reset(self) -> None:
        """Forget results and re-seed the generator."""
        super().reset()
        self._init_state()


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Register :class:`RandomSearch` as ``"random"``."""
    return {"random": RandomSearch}
