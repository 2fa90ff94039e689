"""The options of a tuning run, checked once: :class:`TunerSettings` and :class:`AccuracyConstraint`.

Everything a user can set on :class:`~panther.tuner.tuner.SKAutoTuner` is validated
here, once, and frozen; the run (:mod:`panther.tuner.run`) and the CLI read it
from here instead of re-checking it.

The accuracy constraint has one representation, :class:`AccuracyConstraint`:

* ``"absolute"``: the threshold is ``amount`` (same units as the accuracy function);
* ``"drop"``: the threshold is ``baseline - amount`` (at most ``amount`` lost);
* ``"relative"``: the threshold is ``baseline - |baseline| * amount`` (a fraction lost;
  ``|baseline|`` keeps it below the original for negative scores such as ``-loss``).

The tuner's keyword arguments (``accuracy_threshold`` / ``accuracy_tolerance`` +
``tolerance_mode``) and the CLI's TOML ``threshold`` both become one, through
:meth:`AccuracyConstraint.from_kwargs` and :meth:`AccuracyConstraint.from_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["DEFAULT_N_TRIALS", "AccuracyConstraint", "TunerSettings", "meets_threshold"]

#: Evaluations per layer group when nobody says otherwise: the library's default
#: search, every built-in backend's default ``n_trials`` and the CLI's ``search.n_trials``.
DEFAULT_N_TRIALS = 30

_KINDS = ("absolute", "drop", "relative")


#: The values of ``SKAutoTuner(strategy=...)``.
STRATEGIES = ("auto", "guided", "classic")


def meets_threshold(accuracy: float | None, threshold: float | None) -> bool:
    """Whether ``accuracy`` satisfies ``threshold`` (no threshold: always; no accuracy: never).

    The one comparison used to reject trials, verify the combined model and judge the
    report, so they can never disagree about a borderline value.
    """
    if threshold is None:
        return True
    return accuracy is not None and accuracy >= threshold


@dataclass(frozen=True)
class AccuracyConstraint:
    """The minimum accuracy a tuned model must keep.

    Args:
        kind: ``"absolute"`` (``amount`` is the threshold), ``"drop"`` (at most
            ``amount`` below the original model's accuracy) or ``"relative"`` (at
            most the fraction ``amount`` of ``|original|`` below it).
        amount: the threshold (absolute) or the allowed loss (drop, relative); finite,
            and ``>= 0`` for a loss.
    """

    kind: str
    amount: float

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"accuracy constraint kind must be one of {list(_KINDS)}, got {self.kind!r}")
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)):
            raise TypeError(f"accuracy constraint amount must be a number, got {self.amount!r}")
        amount = float(self.amount)
        if math.isnan(amount):
            raise ValueError(f"the {self.kind} accuracy constraint must be a number, got NaN")
        if self.kind != "absolute" and (not math.isfinite(amount) or amount < 0):
            raise ValueError(f"the allowed accuracy {self.kind} must be a finite number >= 0, got {amount}")
        object.__setattr__(self, "amount", amount)

    @property
    def needs_baseline(self) -> bool:
        """Whether :meth:`resolve` needs the original model's accuracy."""
        return self.kind != "absolute"

    def resolve(self, baseline: float | None = None) -> float:
        """The accuracy threshold, given the original model's accuracy ``baseline``.

        Raises ``ValueError`` when a drop or relative constraint gets no baseline.
        """
        if self.kind == "absolute":
            return self.amount
        if baseline is None:
            raise ValueError(f"a {self.kind} accuracy constraint needs the original model's accuracy")
        if self.kind == "drop":
            return baseline - self.amount
        return baseline - abs(baseline) * self.amount

    @classmethod
    def from_kwargs(
        cls,
        accuracy_threshold: float | None = None,
        accuracy_tolerance: float | None = None,
        tolerance_mode: str = "absolute",
    ) -> AccuracyConstraint | None:
        """The constraint from :class:`SKAutoTuner`'s keyword arguments (``None``: unconstrained).

        ``accuracy_threshold`` is an absolute minimum; ``accuracy_tolerance`` with
        ``tolerance_mode="absolute"`` is a drop, with ``"relative"`` a relative loss.
        """
        if accuracy_threshold is not None and accuracy_tolerance is not None:
            raise ValueError(
                "give either accuracy_threshold (absolute minimum accuracy) or accuracy_tolerance "
                "(allowed loss relative to the original model), not both"
            )
        if tolerance_mode not in ("relative", "absolute"):
            raise ValueError(f"tolerance_mode must be 'relative' or 'absolute', got {tolerance_mode!r}")
        if accuracy_tolerance is not None:
            tolerance = _as_float(accuracy_tolerance, "accuracy_tolerance")
            if not math.isfinite(tolerance) or tolerance < 0:
                raise ValueError(f"accuracy_tolerance must be a finite number >= 0, got {tolerance}")
            return cls("drop" if tolerance_mode == "absolute" else "relative", tolerance)
        if accuracy_threshold is not None:
            threshold = _as_float(accuracy_threshold, "accuracy_threshold")
            if math.isnan(threshold):
                raise ValueError("accuracy_threshold must be a number, got NaN")
            return cls("absolute", threshold)
        return None

    @classmethod
    def from_config(cls, value: Any) -> AccuracyConstraint:
        """The constraint from a config file's ``threshold`` value.

        A number is an absolute threshold; ``{"drop": x}`` and ``{"relative": x}`` are
        losses from the original model (``0 <= x``, and ``x < 1`` when relative).
        Raises ``ValueError``/``TypeError`` with a message saying what to write instead.
        """
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in ("drop", "relative"):
                raise ValueError(
                    f"threshold as a table needs exactly one of 'drop' or 'relative', got {sorted(value)}; "
                    "write threshold = {drop = 0.01} or threshold = {relative = 0.01}")
            ((kind, amount),) = value.items()
            if isinstance(amount, bool) or not isinstance(amount, (int, float)):
                raise TypeError(f"threshold.{kind} must be a number, got {amount!r}")
            if not 0 <= amount < (1 if kind == "relative" else math.inf):
                raise ValueError(f"threshold.{kind} must be >= 0 (and < 1 when relative), got {amount}; "
                                 "use e.g. 0.01 for one percent")
            return cls(kind, float(amount))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"threshold must be a number or {{drop = x}} / {{relative = x}}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, got {value}")
        return cls("absolute", float(value))

    def legacy_info(self) -> dict[str, Any]:
        """The report keys the results manifest has always carried for the constraint."""
        if self.kind == "absolute":
            return {"accuracy_threshold": self.amount, "accuracy_tolerance": None, "tolerance_mode": None}
        return {"accuracy_threshold": None, "accuracy_tolerance": self.amount,
                "tolerance_mode": "absolute" if self.kind == "drop" else "relative"}


def _as_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number, got {value!r}") from exc


def _non_negative_int(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True)
class TunerSettings:
    """Every option of a tuning run, validated (see :class:`SKAutoTuner` for their meaning).

    Build it with :meth:`from_kwargs` from the tuner's keyword arguments; direct
    construction runs the same checks (in ``__post_init__``) except the keyword
    spellings and the threshold arguments, which ``from_kwargs`` folds into
    ``optimization_eval_func`` and ``constraint``.
    """

    accuracy_eval_func: Callable[[nn.Module], float]
    optimization_eval_func: Callable[[nn.Module], float] | None = None
    constraint: AccuracyConstraint | None = None
    num_runs_per_param: int = 1
    verbose: bool = False
    multi_objective: bool = False
    max_trials: int | None = None
    time_budget_s: float | None = None
    progress: bool = False
    skip_costlier: bool = True
    speed_precheck: bool = False
    remeasure_top: int = 3
    remeasure_runs: int = 2
    verify: bool = True
    max_backoff_steps: int = 8
    dedupe: bool = True
    seed: int | None = 0
    #: How configurations are chosen: ``"auto"``, ``"guided"`` or ``"classic"`` (see SKAutoTuner).
    strategy: str = "auto"
    #: Tell backends a graded finite penalty for infeasible trials (``False``: ``-inf``,
    #: as the tutorial's reference algorithm does; an ablation switch for benchmarks).
    penalize_infeasible: bool = True

    def __post_init__(self) -> None:
        if not callable(self.accuracy_eval_func):
            raise TypeError("accuracy_eval_func must be a callable model -> float")
        if self.optimization_eval_func is not None and not callable(self.optimization_eval_func):
            raise TypeError("optmization_eval_func must be a callable model -> float")
        for what, fn in (("accuracy_eval_func", self.accuracy_eval_func),
                         ("optmization_eval_func", self.optimization_eval_func)):
            # Built-in evaluators say their direction; the tuner always maximises.
            if fn is not None and getattr(fn, "higher_is_better", True) is False:
                raise ValueError(
                    f"{what} {fn!r} is lower-is-better, but the tuner maximises; build it with "
                    "negate=True (returns -x) or inverse=True (returns 1/x)"
                )
        n = self.num_runs_per_param
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_runs_per_param must be an int >= 1, got {n!r}")
        if self.constraint is not None and not isinstance(self.constraint, AccuracyConstraint):
            raise TypeError(f"constraint must be an AccuracyConstraint, got {type(self.constraint).__name__}")
        if self.multi_objective and self.optimization_eval_func is None:
            raise ValueError("multi_objective=True needs optmization_eval_func (the second objective)")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        for name in ("max_trials", "remeasure_top", "remeasure_runs", "max_backoff_steps"):
            _non_negative_int(name, getattr(self, name))
        if self.time_budget_s is not None:
            if not (_as_float(self.time_budget_s, "time_budget_s") > 0):
                raise ValueError(f"time_budget_s must be > 0 seconds, got {self.time_budget_s!r}")
            object.__setattr__(self, "time_budget_s", float(self.time_budget_s))
        for name in ("verbose", "multi_objective", "progress", "skip_costlier", "speed_precheck",
                     "verify", "dedupe", "penalize_infeasible"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    @classmethod
    def from_kwargs(
        cls,
        accuracy_eval_func: Callable[[nn.Module], float],
        *,
        optmization_eval_func: Callable[[nn.Module], float] | None = None,
        optimization_eval_func: Callable[[nn.Module], float] | None = None,
        accuracy_threshold: float | None = None,
        accuracy_tolerance: float | None = None,
        tolerance_mode: str = "absolute",
        progress: bool | None = None,
        verbose: bool = False,
        **options: Any,
    ) -> TunerSettings:
        """Settings from :class:`SKAutoTuner`'s keyword arguments (both spellings accepted)."""
        if optmization_eval_func is not None and optimization_eval_func is not None:
            raise ValueError(
                "pass the optimisation function once: either optmization_eval_func (the tutorial's "
                "spelling) or optimization_eval_func, not both"
            )
        if not callable(accuracy_eval_func):
            raise TypeError("accuracy_eval_func must be a callable model -> float")
        speed = optmization_eval_func if optmization_eval_func is not None else optimization_eval_func
        if speed is not None and not callable(speed):
            raise TypeError("optmization_eval_func must be a callable model -> float")
        constraint = AccuracyConstraint.from_kwargs(accuracy_threshold, accuracy_tolerance, tolerance_mode)
        return cls(accuracy_eval_func=accuracy_eval_func, optimization_eval_func=speed,
                   constraint=constraint, verbose=bool(verbose),
                   progress=bool(verbose) if progress is None else bool(progress), **options)

    @property
    def needs_baseline(self) -> bool:
        """Whether the original model must be evaluated before the searches."""
        return (self.constraint is not None and self.constraint.needs_baseline) or self.verify \
            or self.speed_precheck
