"""scikit-optimize backed Bayesian search (built-in plugin ``"skopt"``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from panther.tuner.config import normalize_param_space
from panther.tuner.hookspecs import hookimpl
from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key
from panther.tuner.search.codec import ParamCodec
from panther.tuner.settings import DEFAULT_N_TRIALS

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


def _dimension(codec: ParamCodec) -> Any:
    """The scikit-optimize dimension of one parameter (``None`` for a constant).

    Categorical choices and stepped spaces become integer *indices* (so choices can be
    any Python objects, and the surrogate still sees a grid's order); plain integer
    ranges and continuous ranges are handed over as ranges, never as lists.
    """
    from skopt import space as sk

    prior = "log-uniform" if codec.log else "uniform"
    if codec.kind == "constant":
        return None
    if codec.kind == "categorical":
        return sk.Categorical(list(range(codec.size)), name=codec.name)
    if codec.kind == "int" and codec.step == 1:
        return sk.Integer(codec.low, codec.high, prior=prior, name=codec.name)
    if codec.kind == "float":
        return sk.Real(codec.low, codec.high, prior=prior, name=codec.name)
    return sk.Integer(0, codec.size - 1, name=codec.name)


def _decode(codec: ParamCodec, x: Any) -> Any:
    if codec.kind == "constant":
        return codec.value_at(0)
    if codec.kind == "categorical" or (codec.kind != "float" and not (codec.kind == "int" and codec.step == 1)):
        return codec.value_at(int(x))
    return codec.snap(x)


def _encode(codec: ParamCodec, value: Any) -> Any:
    if codec.kind == "float":
        return float(value)
    if codec.kind == "int" and codec.step == 1:
        return int(value)
    return codec.index_of(value)


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
        n_trials: int = DEFAULT_N_TRIALS,
        estimator: str = "GP",
        seed: int | None = None,
        n_initial_points: int = 10,
        acq_func: str = "gp_hedge",
    ) -> None:
        super().__init__()
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
        self.n_trials = self.checked_n_trials(n_trials)
        self.estimator = estimator.upper()
        self.seed = seed
        self.n_initial_points = n_initial_points
        self.acq_func = acq_func
        self._init_state()

    def _init_state(self) -> None:
        self._optimizer: Any = None
        self._codecs: list[ParamCodec] = []
        self._dims: list[Any] = []
        self._seen: set[Any] = set()
        self._size: int | None = None
        self._initialized = False
        self._constant_only_proposed = False

    def initialize(self, param_space: dict[str, Any]) -> None:
        """Build a fresh, seeded ``skopt.Optimizer`` over ``param_space``."""
        from skopt import Optimizer

        self.reset()
        self.param_space = normalize_param_space(param_space)
        self._codecs = [ParamCodec(name, spec, "SkoptSearch") for name, spec in self.param_space.items()]
        self._dims = [_dimension(c) for c in self._codecs]
        self._size = finite_space_size(self.param_space)
        active = [d for d in self._dims if d is not None]
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
        return {c.name: _decode(c, None if d is None else next(it)) for c, d in zip(self._codecs, self._dims)}

    def ask(self) -> dict[str, Any] | None:
        """The optimizer's next point, or ``None`` when finished."""
        if not self._initialized:
            raise RuntimeError("call initialize(param_space) before get_next_params()")
        if self.exhausted():
            return None
        if self._optimizer is None:
            self._constant_only_proposed = True
            return self._decode([])
        with warnings.catch_warnings(), _single_threaded_blas():
            # "evaluated at this point before": repeats are expected on small spaces.
            warnings.simplefilter("ignore", UserWarning)
            x = self._optimizer.ask()
        return self._decode(x)

    def tell(
        self,
        params: dict[str, Any],
        score: float,
        *,
        constraint: float | None = None,
        evaluated: bool = True,
        values: Sequence[float] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """Tell the optimizer ``-score`` for ``params``.

        A non-finite score is recorded as worse than every result so far (by the
        spread of the results seen, or 1.0), never as a huge constant that would
        flatten the surrogate; it never becomes the best. ``values`` and ``attrs``
        are ignored (single objective, nothing stored).
        """
        score = float(score)
        super().tell(params, score, constraint=constraint, evaluated=evaluated)
        self._seen.add(params_key(params))
        if self._optimizer is None:
            return
        x = [_encode(c, params[c.name]) for c, d in zip(self._codecs, self._dims) if d is not None]
        y = -score if math.isfinite(score) else self._worse_than_seen()
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
        super().report_failure(params, error)
        self._seen.add(params_key(params))

    def exhausted(self) -> bool:
        """Whether every point of a finite space has been told (or the one constant point proposed)."""
        if not self._initialized:
            return False
        if self._optimizer is None and self._constant_only_proposed:
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
