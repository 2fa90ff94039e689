"""Successive halving over parameter values, driven through panther's search interface."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from panther.tuner.config import normalize_param_space
from panther.tuner.search.base import SearchAlgorithm, params_key
from panther.tuner.settings import DEFAULT_N_TRIALS

__all__ = ["HalvingSearch"]

# Products up to this size are enumerated to find unseen points; larger ones are sampled.
_ENUMERATION_LIMIT = 100_000
# A parameter with more values than this starts from an evenly spread subset of them.
_VALUE_LIMIT = 1_000_000
_MAX_TRIES = 200


class HalvingSearch(SearchAlgorithm):
    """Successive halving over each parameter's values, probing around the incumbent.

    Round 1 evaluates a covering design (every value of every parameter appears,
    randomly paired). Every later round probes each remaining value of each
    parameter with the other parameters at the incumbent (the best point so far),
    so a value is judged next to good partners rather than random ones; from the
    third round on, each parameter first keeps only the best ``1/eta`` of its values
    (ranked by the best score seen with that value).

    Args:
        n_trials: evaluations to propose: results told with ``evaluated=False`` (skipped
            or cached by the tuner) still rank values but do not count, up to the
            proposal cap of ``PROPOSAL_CAP_FACTOR * n_trials`` proposals.
        seed: seed of the batch designs; the same seed gives the same sequence.
        eta: reduction factor per round (``2`` halves every parameter's values).
        batch_size: configurations per round; default ``max(4, most values of any parameter)``
            so every value is tried in the first round.
        float_points: values a continuous ``Float`` (or a space of more than a million
            values) is discretised to.

    The search finishes after ``n_trials`` evaluations, at the proposal cap, or once
    the remaining product of values has been fully proposed. It implements only
    panther's narrow search contract (``initialize``/``ask``/``tell``/``exhausted``)
    and reads its remaining budget through the public ``budget_left``.
    """

    def __init__(
        self,
        n_trials: int = DEFAULT_N_TRIALS,
        seed: int | None = None,
        eta: int = 2,
        batch_size: int | None = None,
        float_points: int = 9,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("n_trials", n_trials, 1),
            ("eta", eta, 2),
            ("float_points", float_points, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.n_trials = n_trials
        self.seed = seed
        self.eta = eta
        self.batch_size = batch_size
        self.float_points = float_points
        self._init_state()

    def _init_state(self) -> None:
        self._rng = random.Random(self.seed)
        self._candidates: dict[str, list[Any]] = {}
        self._queue: list[dict[str, Any]] = []
        self._seen: set[Any] = set()
        self._rounds = 0
        self._done = False
        self._initialized = False

    @property
    def candidates(self) -> dict[str, list[Any]]:
        """The values each parameter still has in play."""
        return {k: list(v) for k, v in self._candidates.items()}

    @property
    def rounds(self) -> int:
        """How many batches have been generated."""
        return self._rounds

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start from every value of every parameter (continuous ones discretised)."""
        self.reset()
        self.param_space = normalize_param_space(param_space)
        n = self.float_points
        for name, spec in self.param_space.items():
            size = spec.size()
            if size is not None and size <= _VALUE_LIMIT:
                values = spec.values()
            elif size is not None and getattr(spec, "log", False):  # huge log-scaled Int
                lo, hi = math.log(spec.low), math.log(spec.high)
                values = list(dict.fromkeys(min(spec.high, max(spec.low, round(math.exp(
                    lo + (hi - lo) * i / (n - 1))))) for i in range(n)))
            elif size is not None:  # huge finite space: evenly spread points, ends included
                values = list(dict.fromkeys(spec.value_at(round(i * (size - 1) / (n - 1)))
                                            for i in range(n)))
            elif spec.log:  # continuous Float
                lo, hi = math.log(spec.low), math.log(spec.high)
                values = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
            else:
                values = [spec.low + (spec.high - spec.low) * i / (n - 1) for i in range(n)]
            self._candidates[name] = list(values)
        self._initialized = True

    def _unseen(self, params: dict[str, Any]) -> bool:
        return params_key(params) not in self._seen

    def _budget_left(self) -> int:
        # Size batches by the evaluations left; unevaluated results leave room for more
        # rounds, and the proposal cap bounds them.
        return self.budget_left or 0

    def _covering_batch(self) -> list[dict[str, Any]]:
        names = list(self._candidates)
        widest = max(len(v) for v in self._candidates.values())
        size = min(self.batch_size or max(4, widest), self._budget_left())
        # Each column cycles through a shuffled copy of its values, so every value appears.
        columns = {}
        for name in names:
            values = list(self._candidates[name])
            self._rng.shuffle(values)
            columns[name] = [values[i % len(values)] for i in range(size)]
        batch: list[dict[str, Any]] = []
        keys: set[Any] = set()
        product_size = math.prod(len(v) for v in self._candidates.values())
        for i in range(size):
            params = {name: columns[name][i] for name in names}
            if not self._unseen(params) or params_key(params) in keys:
                params = self._random_unseen(keys, product_size)
                if params is None:
                    break
            keys.add(params_key(params))
            batch.append(params)
        return batch

    def _incumbent(self) -> dict[str, Any]:
        best = self.get_best_params()
        if best is None:  # every result infeasible so far: take the highest score anyway
            best = dict(max(self.history, key=lambda ps: ps[1])[0])
        # Keep the incumbent inside the current candidate product.
        return {
            name: best[name] if best.get(name) in values else values[0]
            for name, values in self._candidates.items()
        }

    def _probe_batch(self) -> list[dict[str, Any]]:
        incumbent = self._incumbent()
        batch: list[dict[str, Any]] = []
        keys: set[Any] = set()
        for name, values in self._candidates.items():
            for value in values:
                params = {**incumbent, name: value}
                key = params_key(params)
                if key in self._seen or key in keys:
                    continue
                keys.add(key)
                batch.append(params)
        self._rng.shuffle(batch)
        return batch[: self._budget_left()]

    def _make_batch(self) -> list[dict[str, Any]]:
        if not self.history:
            return self._covering_batch()
        while True:
            if self._rounds >= 2:
                self._halve()
            batch = self._probe_batch()
            if batch or all(len(v) == 1 for v in self._candidates.values()):
                return batch
            # Every probe was seen already: shrink further before giving up.
            self._rounds += 1

    def _random_unseen(self, taken: set[Any], product_size: int) -> dict[str, Any] | None:
        names = list(self._candidates)
        excluded = self._seen | taken
        if product_size <= _ENUMERATION_LIMIT:
            left = [
                params
                for params in (
                    dict(zip(names, combo))
                    for combo in itertools.product(*self._candidates.values())
                )
                if params_key(params) not in excluded
            ]
            return self._rng.choice(left) if left else None
        for _ in range(_MAX_TRIES):
            params = {n: self._rng.choice(v) for n, v in self._candidates.items()}
            if params_key(params) not in excluded:
                return params
        return None

    def _halve(self) -> None:
        for name, values in self._candidates.items():
            if len(values) <= 1:
                continue
            best: dict[int, float] = {}
            for params, score in self.history:
                if name in params and params[name] in values:
                    i = values.index(params[name])
                    best[i] = max(best.get(i, -math.inf), score)
            keep = max(1, math.ceil(len(values) / self.eta))
            ranked = sorted(range(len(values)), key=lambda i: (-best.get(i, -math.inf), i))
            kept = sorted(ranked[:keep])
            self._candidates[name] = [values[i] for i in kept]

    def ask(self) -> dict[str, Any] | None:
        """The next configuration of the current round, or ``None`` when the product is used up."""
        if not self._initialized:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        if self._done:
            return None
        if not self._queue:
            self._queue = self._make_batch()
            self._rounds += 1
            if not self._queue:
                self._done = True
                return None
        params = self._queue.pop(0)
        self._seen.add(params_key(params))
        return params

    def exhausted(self) -> bool:
        """Whether the remaining product of values has been fully proposed."""
        return self._initialized and self._done

    def reset(self) -> None:
        """Forget everything and re-seed."""
        super().reset()
        self._init_state()
