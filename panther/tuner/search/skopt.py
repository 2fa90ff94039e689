"""scikit-optimize backed Bayesian search (built-in plugin ``"skopt"``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from panther.tuner.config import Categorical, Float, Int, ParamSpec, normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key

__all__ = ["SkoptSearch"]

_ESTIMATORS = ("GP", "RF", "ET", "GBRT")
# "EIps"/"PIps" are left out: they need (value, time) results, which the tuner does not report.
_ACQ_FUNCS = ("gp_hedge", "EI", "PI", "LCB")


def _single_threaded_blas() -> Any:
    """A context limiting BLAS/OpenMP to one thread.

    The surrogate's matrices are tiny (one row per trial); multi-threaded BLAS
    only adds synchronisation, and on a busy machine L-BFGS over the GP kernel
    becomes ~10x slower from oversubscription.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl ships with scikit-learn; be safe anyway
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


class _Dim:
    """One panther parameter as a scikit-optimize dimension.

    Stepped ``Int``/``Float`` spaces become an ``Integer`` over grid indices, so
    the surrogate still sees their order; ``Categorical`` becomes a skopt
    ``Categorical`` over choice indices (choices can be any Python objects).
    Single-valued spaces are kept out of the optimizer entirely.
    """

    def __init__(self, name: str, spec: ParamSpec) -> None:
        from skopt import space as sk

        self.name = name
        self.spec = spec
        self.grid = spec.values()
        self.constant = self.grid is not None and len(self.grid) == 1
        self.dimension: Any = None
        if self.constant:
            return
        if isinstance(spec, Categorical):
            self.dimension = sk.Categorical(list(range(len(spec.choices))), name=name)
        elif isinstance(spec, Int) and spec.step == 1:
            prior = "log-uniform" if spec.log else "uniform"
            self.dimension = sk.Integer(spec.low, spec.high, prior=prior, name=name)
        elif self.grid is not None:
            self.dimension = sk.Integer(0, len(self.grid) - 1, name=name)
        elif isinstance(spec, Float):
            prior = "log-uniform" if spec.log else "uniform"
            self.dimension = sk.Real(spec.low, spec.high, prior=prior, name=name)
        else:
            raise TypeError(
                f"SkoptSearch supports Categorical, Int and Float spaces; parameter {name!r} "
                f"is a {type(spec).__name__}"
            )

    def decode(self, x: Any) -> Any:
        if self.constant:
            return self.grid[0]  # type: ignore[index]
        if isinstance(self.spec, Categorical):
            return self.spec.choices[int(x)]
        if isinstance(self.spec, Int) and self.spec.step == 1:
            return int(x)
        if self.grid is not None:
            return self.grid[int(x)]
        return float(x)

    def encode(self, value: Any) -> Any:
        if isinstance(self.spec, Categorical):
            return self.spec.choices.index(value)
        if isinstance(self.spec, Int) and self.spec.step == 1:
            return int(value)
        if self.grid is not None:
            return min(range(len(self.grid)), key=lambda i: abs(self.grid[i] - value))
        return float(value)


class SkoptSearch(SearchAlgorithm):
    """Bayesian optimisation with ``skopt.Optimizer`` (ask/tell), minimising ``-score``.

    Args:
        n_trials: evaluations to collect: results told with ``evaluated=False`` (skipped
            or cached by the tuner) teach the surrogate but do not count, up to the
            proposal cap of ``PROPOSAL_CAP_FACTOR * n_trials`` proposals.
        estimator: surrogate model: ``"GP"``, ``"RF"``, ``"ET"`` or ``"GBRT"``.
        seed: random state; the same seed gives the same sequence.
        n_initial_points: random points before the surrogate is used (clamped to the
            size of a finite space).
        acq_func: acquisition function: ``"gp_hedge"``, ``"EI"``, ``"PI"`` or ``"LCB"``.

    The search finishes after ``n_trials`` evaluated results, at the proposal cap, or
    once every point of a finite space has been told. The optimizer may propose a point again; telling it again
    is fine.
    """

    def __init__(
        self,
        n_trials: int = 50,
        estimator: str = "GP",
        seed: int | None = None,
        n_initial_points: int = 10,
        acq_func: str = "gp_hedge",
    ) -> None:
        super().__init__()
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
        if not isinstance(estimator, str) or estimator.upper() not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {list(_ESTIMATORS)}, got {estimator!r}")
        if acq_func not in _ACQ_FUNCS:
            raise ValueError(f"acq_func must be one of {list(_ACQ_FUNCS)}, got {acq_func!r}")
        if (
            isinstance(n_initial_points, bool)
            or not isinstance(n_initial_points, int)
            or n_initial_points < 1
        ):
            raise ValueError(f"n_initial_points must be a positive int, got {n_initial_points!r}")
        self.n_trials = n_trials
        self.estimator = estimator.upper()
        self.seed = seed
        self.n_initial_points = n_initial_points
        self.acq_func = acq_func
        self._init_state()

    def _init_state(self) -> None:
        self._optimizer: Any = None
        self._dims: list[_Dim] = []
        self._seen: set[Any] = set()
        self._size: int | None = None
        self._initialized = False
        self._constant_only_proposed = False

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Build a fresh, seeded ``skopt.Optimizer`` over ``param_space``."""
        from skopt import Optimizer

        self.reset()
        self.param_space = normalize_param_space(param_space)
        self._dims = [_Dim(name, spec) for name, spec in self.param_space.items()]
        self._size = finite_space_size(self.param_space)
        active = [d.dimension for d in self._dims if not d.constant]
        if active:
            n_init = self.n_initial_points
            if self._size is not None:
                n_init = max(1, min(n_init, self._size))
            self._optimizer = Optimizer(
                active,
                base_estimator=self.estimator,
                n_initial_points=n_init,
                acq_func=self.acq_func,
                random_state=self.seed,
            )
        self._initialized = True

    def _decode(self, x: list[Any]) -> dict[str, Any]:
        it = iter(x)
        return {d.name: d.decode(None if d.constant else next(it)) for d in self._dims}

    def get_next_params(self) -> dict[str, Any] | None:
        """The optimizer's next point, or ``None`` when finished."""
        if not self._initialized:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        if self.is_finished():
            return None
        self._count_proposal()
        if self._optimizer is None:
            self._constant_only_proposed = True
            return self._decode([])
        with warnings.catch_warnings(), _single_threaded_blas():
            # "evaluated at this point before": repeats are expected on small spaces.
            warnings.simplefilter("ignore", UserWarning)
            x = self._optimizer.ask()
        return self._decode(x)

    def update(
        self,
        params: dict[str, Any],
        score: float,
        constraint: float | None = None,
        *,
        evaluated: bool = True,
        values: Sequence[float] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """Tell the optimizer ``-score`` for ``params``.

        A non-finite score is recorded as worse than every result so far (by the
        spread of the results seen, or 1.0), never as a huge constant that would
        flatten the surrogate; it never becomes the best. ``evaluated=False``
        results are told all the same but do not count toward ``n_trials``;
        ``values`` and ``attrs`` are ignored (single objective, nothing stored).
        """
        score = float(score)
        finite = math.isfinite(score)
        if finite:
            super().update(params, score, constraint, evaluated=evaluated)
        else:
            self.history.append((dict(params), score))
            self._count_result(evaluated)
        self._seen.add(params_key(params))
        if self._optimizer is None:
            return
        x = [d.encode(params[d.name]) for d in self._dims if not d.constant]
        y = -score if finite else self._worse_than_seen()
        with warnings.catch_warnings(), _single_threaded_blas():
            warnings.simplefilter("ignore", UserWarning)
            self._optimizer.tell(x, y)

    def _worse_than_seen(self) -> float:
        # skopt's surrogates cannot take inf/nan: a finite loss one spread above the worst.
        losses = [y for y in self._optimizer.yi if math.isfinite(y)]
        if not losses:
            return 1.0
        spread = max(losses) - min(losses)
        return max(losses) + (spread if spread > 0 else 1.0)

    def report_failure(self, params: dict[str, Any], error: str | None = None) -> None:
        """Count a failed evaluation towards ``n_trials`` and never propose it as new again."""
        self._count_result(evaluated=True)
        self._seen.add(params_key(params))

    def is_finished(self) -> bool:
        """Whether ``n_trials`` evaluations were told, the proposal cap was reached, or a
        finite space is exhausted."""
        if not self._initialized:
            return False
        if self._optimizer is None and self._constant_only_proposed:
            return True
        if self._budget_spent():
            return True
        return self._size is not None and len(self._seen) >= self._size

    def reset(self) -> None:
        """Forget the optimizer and all results."""
        super().reset()
        self._init_state()


@hookimpl
def panther_search_algorithms() -> dict[str, type[SearchAlgorithm]]:
    """Register :class:`SkoptSearch` as ``"skopt"``."""
    return {"skopt": SkoptSearch}
