"""The interface every search algorithm implements.

A backend implements a narrow contract: :meth:`~SearchAlgorithm.initialize`,
:meth:`~SearchAlgorithm.ask` (the next proposal, or ``None`` when it has nothing
new), :meth:`~SearchAlgorithm.tell` (a result, with ``evaluated=``) and, optionally,
:meth:`~SearchAlgorithm.exhausted`. Everything else (the evaluation budget, the
proposal cap, best-result tracking, counting) is implemented once, here, and the
tuner's search loop (:mod:`panther.tuner.search_loop`) owns when a group's search
stops, as an Optuna study owns stopping for its samplers.

Standalone, a search is driven through the budgeted wrappers::

    search.initialize(space)
    while (params := search.get_next_params()) is not None:
        search.update(params, score, constraint=..., evaluated=...)

**Multi-fidelity (optional).** A backend that prunes trials returns the fidelities to
screen at from :meth:`~SearchAlgorithm.intermediate_fidelities`; the loop then reports
each screen's value with :meth:`~SearchAlgorithm.report_intermediate` (which says whether
to stop) and ends a stopped trial with :meth:`~SearchAlgorithm.prune`. The defaults do
nothing: a backend that does not prune is never asked to.

``n_trials`` counts *evaluations*: results told with ``evaluated=False``
(proposals the tuner answered without running the user's functions) teach the
backend but do not use up the budget. A backend that sizes its own batches reads
what is left through the public :attr:`~SearchAlgorithm.budget_left`.

Built-in backends and third-party plugins subclass :class:`SearchAlgorithm`
and are registered by name through the ``panther_search_algorithms`` hook.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from panther.tuner.config import ParamSpec

__all__ = ["SearchAlgorithm", "finite_space_size", "params_key"]


def finite_space_size(param_space: dict[str, ParamSpec]) -> int | None:
    """How many distinct points ``param_space`` has, or ``None`` if a parameter is continuous.

    Computed from each space's size, never by listing values.
    """
    size = 1
    for spec in param_space.values():
        n = spec.size()
        if n is None:
            return None
        size *= n
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

    **What a backend implements** (its own logic only):

    * :meth:`initialize` -- start a search over a space;
    * :meth:`ask` -- the next parameters to try, or ``None`` when the backend has
      nothing more to propose;
    * :meth:`tell` -- learn from a result (call ``super().tell(...)`` to keep the
      best-result tracking, or override :meth:`is_better` for another direction);
    * optionally :meth:`exhausted` -- whether the backend will propose nothing new
      (e.g. every point of a grid was proposed);
    * optionally :meth:`spawn` -- per-group copies for backends with external state;
    * optionally :meth:`intermediate_fidelities`, :meth:`report_intermediate` and
      :meth:`tell_pruned` -- multi-fidelity pruning (as :class:`OptunaSearch` does with
      Optuna's pruners).

    **What the base provides** (never re-implemented by a backend):

    * :meth:`get_next_params` / :meth:`update` / :meth:`is_finished`: the budgeted
      wrappers a standalone driver (and the tuner's loop) calls. They count
      proposals and evaluations, end the search after ``n_trials`` evaluations, at
      the proposal cap (``PROPOSAL_CAP_FACTOR * n_trials`` proposals, so a search
      whose proposals all go unevaluated still ends), or once :meth:`exhausted`;
    * :attr:`n_evaluated`, :attr:`n_proposed`, :meth:`proposal_cap`,
      :attr:`evaluations_left` and :attr:`budget_left` (public: a backend that sizes
      batches reads them), :meth:`report_failure`, best params/score, ``history``.

    **The evaluation budget.** ``n_trials`` is the number of *evaluations* a backend
    proposes before it finishes (``None``: unbounded, e.g. a grid that just
    enumerates). A result told with ``evaluated=False`` is a proposal the tuner
    answered without running the user's functions (skipped as no cheaper than the
    original layer, or a repeat answered from its cache): the backend learns from it
    like from any result, but it does not count toward ``n_trials``. Failures
    reported through :meth:`report_failure` are evaluations.

    **What the tuner reads besides that** (optional):

    * ``directions`` -- a list of ``"maximize"``/``"minimize"``, one per objective;
      ``multi_objective`` tuning needs two.
    * ``resumed_trials`` -- results a persistent backend loaded from an earlier run:
      dicts with ``params``, ``score`` and ``attrs`` (and optionally ``number``,
      ``constraint``, ``values``, ``evaluated``); the tuner rebuilds its records from
      ``attrs["panther_row"]``.
    * ``tell(values=..., attrs=...)`` -- ``values`` holds the objective values of a
      multi-objective search, ``attrs`` JSON-serialisable extras a persistent backend
      stores with the result (the tuner passes ``{"panther_row": ...}``).

    Backends written against the older, wider contract (overriding
    ``get_next_params``/``update``/``is_finished`` and calling ``_count_proposal`` /
    ``_budget_spent``) keep working; new ones should implement ``ask``/``tell``.
    """

    #: Proposals per unit of ``n_trials`` after which a search ends even though most
    #: of its proposals went unevaluated (see :meth:`proposal_cap`).
    PROPOSAL_CAP_FACTOR = 10
    #: Evaluations to propose before finishing; ``None`` means unbounded.
    n_trials: int | None = None
    #: Objective directions of a multi-objective backend; ``None`` for one objective.
    directions: list[str] | None = None

    def __init__(self) -> None:
        self.param_space: dict[str, ParamSpec] = {}
        self.history: list[tuple[dict[str, Any], float]] = []
        self._best_params: dict[str, Any] | None = None
        self._best_score: float | None = None
        self._n_evaluated = 0
        self._n_proposed = 0
        self._asked_out = False
        #: Results loaded from an earlier run (persistent backends fill it in).
        self.resumed_trials: list[dict[str, Any]] = []

    @staticmethod
    def checked_n_trials(n_trials: Any) -> int:
        """``n_trials`` checked for a backend's constructor: a positive int, else ``ValueError``."""
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
        return n_trials

    # ------------------------------------------------------------------ the backend's part

    @abstractmethod
    def initialize(self, param_space: dict[str, ParamSpec]) -> None:
        """Start a new search over ``param_space`` (``{name: ParamSpec}``)."""

    def ask(self) -> dict[str, Any] | None:
        """The backend's next proposal, or ``None`` when it has nothing more to propose.

        Called only while the budget allows (by :meth:`get_next_params`); never counts.
        """
        raise NotImplementedError(
            f"{type(self).__name__} implements neither ask() nor get_next_params()")

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
        """Learn from the result of ``params`` (see :meth:`update` for the arguments).

        The base records ``history`` and the best feasible evaluated result;
        backends that learn call ``super().tell(...)`` and add their own logic.
        """
        self.history.append((dict(params), float(score)))
        if not evaluated or (constraint is not None and constraint > 0) or not math.isfinite(score):
            return
        if self._best_score is None or self.is_better(float(score), self._best_score):
            self._best_score = float(score)
            self._best_params = dict(params)

    def is_better(self, score: float, best: float) -> bool:
        """Whether ``score`` beats ``best`` (higher is better; a minimising backend overrides)."""
        return score > best

    def exhausted(self) -> bool:
        """Whether the backend will propose nothing new (default: once :meth:`ask` returned ``None``)."""
        return self._asked_out

    # ------------------------------------------------------------------ multi-fidelity (optional)

    def intermediate_fidelities(self) -> tuple[float, ...]:
        """The fidelities below 1 to screen each trial at, increasing (default ``()``: none).

        When the accuracy function takes a ``fidelity`` (:mod:`panther.tuner.fidelity`),
        the tuner evaluates each new trial at these fractions of the validation data
        first, calls :meth:`report_intermediate` after each, and stops the trial when it
        says so. ``()`` means every trial gets its full evaluation only.
        """
        return ()

    def report_intermediate(self, params: dict[str, Any], value: float, fidelity: float) -> bool:
        """Report the screen of the trial of ``params`` at ``fidelity``; ``True`` stops (prunes) it.

        ``value`` is higher-is-better and comparable across trials at the same fidelity
        (see :mod:`panther.tuner.search_loop` for what the tuner reports). Default: never prune.
        """
        return False

    def tell_pruned(self, params: dict[str, Any], *, attrs: dict[str, Any] | None = None) -> None:
        """Learn that the trial of ``params`` was stopped at a low fidelity (default: nothing).

        A pruned trial has no score and never becomes the best; ``attrs`` as in :meth:`tell`.
        """
        return None  # only a backend that prunes has anything to record

    # ------------------------------------------------------------------ the driver's part

    def get_next_params(self) -> dict[str, Any] | None:
        """The next parameters to evaluate, or ``None`` when the search is finished.

        ``None`` after ``n_trials`` evaluations, at the proposal cap, or once the
        backend is exhausted; otherwise the backend's :meth:`ask`, counted.
        """
        if self.is_finished():
            return None
        params = self.ask()
        if params is None:
            self._asked_out = True
            return None
        self._n_proposed += 1
        return params

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
        """Report the result of ``params`` (counted, then passed to :meth:`tell`).

        Args:
            params: the parameters, as proposed by :meth:`get_next_params`.
            score: their score, higher is better; always finite from the tuner (it
                grades rejected, failed and skipped points with finite penalties).
            constraint: the accuracy shortfall (``<= 0`` means feasible) for backends
                that can model constraints; others can ignore it, since the tuner
                already grades infeasible scores below every feasible one.
            evaluated: ``False`` when the tuner did not run the user's functions for
                ``params`` (skipped as costlier, or a cached repeat): learn from the
                result, but do not count it toward ``n_trials``, and never make it the
                best (it was never measured).
            values: the objective values of a multi-objective search (one per entry
                of ``directions``); single-objective backends ignore them.
            attrs: JSON-serialisable extras to store with the result (persistent
                backends keep them for :attr:`resumed_trials`); others ignore them.
        """
        self.tell(params, score, constraint=constraint, evaluated=evaluated, values=values, attrs=attrs)
        self._count_result(evaluated)

    def prune(self, params: dict[str, Any], *, attrs: dict[str, Any] | None = None) -> None:
        """Report that the trial of ``params`` was pruned (passed to :meth:`tell_pruned`).

        A pruned trial ran the user's functions, at a low fidelity: it counts as one
        evaluation toward ``n_trials`` (as Optuna counts pruned trials), although it cost
        only a fraction of one.
        """
        self.tell_pruned(params, attrs=attrs)
        self._count_result(evaluated=True)

    def is_finished(self) -> bool:
        """Whether no further parameters will be proposed (budget, cap, or exhausted)."""
        return self._budget_spent() or self.exhausted()

    @property
    def finished(self) -> bool:
        """Alias of :meth:`is_finished`."""
        return self.is_finished()

    def report_failure(self, params: dict[str, Any], error: str | None = None) -> None:
        """Tell the search that evaluating ``params`` failed (optional for backends).

        A failure is an evaluation: it counts toward ``n_trials``. The default records
        nothing else, so a failed point may be proposed again; backends with a trial
        log (Optuna) record it as failed.
        """
        self._count_result(evaluated=True)

    # ------------------------------------------------------------------ budget

    @property
    def n_evaluated(self) -> int:
        """Results told with ``evaluated=True`` (plus failures): what ``n_trials`` counts."""
        return self._n_evaluated

    @property
    def n_proposed(self) -> int:
        """Proposals handed out so far (what :meth:`proposal_cap` limits)."""
        return self._n_proposed

    def proposal_cap(self) -> int | None:
        """The most proposals this search makes: ``PROPOSAL_CAP_FACTOR * n_trials`` (``None`` if unbounded)."""
        n = getattr(self, "n_trials", None)
        if not isinstance(n, int) or isinstance(n, bool):
            return None
        return self.PROPOSAL_CAP_FACTOR * n

    @property
    def evaluations_left(self) -> int | None:
        """Evaluations still in the budget (``None`` when unbounded)."""
        n = getattr(self, "n_trials", None)
        if not isinstance(n, int) or isinstance(n, bool):
            return None
        return max(0, n - self._n_evaluated)

    @property
    def budget_left(self) -> int | None:
        """Proposals worth making now: the evaluations left, at most the proposals left
        before the cap (``None`` when unbounded). Backends that plan batches size them by it."""
        left = self.evaluations_left
        cap = self.proposal_cap()
        if left is None:
            return None
        return left if cap is None else max(0, min(left, cap - self._n_proposed))

    def _budget_spent(self) -> bool:
        """Whether ``n_trials`` evaluations were told or the proposal cap was reached."""
        left = self.evaluations_left
        if left is None:
            return False
        cap = self.proposal_cap()
        return left <= 0 or (cap is not None and self._n_proposed >= cap)

    def count_resumed(self, evaluated: bool) -> None:
        """Count a result a persistent backend loaded from an earlier run.

        It was one proposal (for the cap) and, when ``evaluated``, one evaluation
        (for ``n_trials``), so a resumed search continues where the earlier one stopped.
        """
        self._n_proposed += 1
        self._count_result(evaluated)

    # The older contract's counters, kept for backends written against it.
    def _count_proposal(self, n: int = 1) -> None:
        """Record ``n`` proposals (for backends that override :meth:`get_next_params`)."""
        self._n_proposed += n

    def _count_result(self, evaluated: bool = True) -> None:
        """Record one told result; only evaluated ones use up ``n_trials``."""
        if evaluated:
            self._n_evaluated += 1

    def _evaluations_left(self) -> int | None:
        return self.evaluations_left

    # ------------------------------------------------------------------ results

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

    def reset(self) -> None:
        """Forget all state so :meth:`initialize` can start afresh."""
        self.param_space = {}
        self.history = []
        self._best_params = None
        self._best_score = None
        self._n_evaluated = 0
        self._n_proposed = 0
        self._asked_out = False
        self.resumed_trials = []

    def spawn(self, key: str) -> SearchAlgorithm:
        """A fresh search with the same settings, for the layer group named ``key``.

        The tuner runs one search per layer group and calls this on the object the
        user passed, which it leaves unchanged. Backends with external state (an
        Optuna study name, a storage) override it to keep each group's state apart.
        """
        child = copy.deepcopy(self)
        child.reset()
        return child
