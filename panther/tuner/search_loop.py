"""One layer group's search: budget, stopping, the repeat cache, and telling the backend.

This is the only module that talks to a search backend. For each group it spawns
a search from the user's :class:`~panther.tuner.search.base.SearchAlgorithm`,
asks it for proposals, answers each one (evaluated by :mod:`~panther.tuner.trials`,
or from the cache for a repeat), and tells it the result. It alone decides when a
group's search ends:

* the evaluation budget (``min(n_trials, max_trials)``) is spent: skipped and cached
  proposals are free, they do not use it up;
* every point of a finite space has been handled;
* the sampler keeps re-proposing configurations it was already told (a streak of
  :func:`stall_limit` cache hits): the space is exhausted *for the sampler*, so asking
  on would only pile up cached rows;
* the proposal cap (``PROPOSAL_CAP_FACTOR x budget`` proposals) is reached;
* the backend says it is finished, or the run's ``time_budget_s`` is spent.

The reason is recorded in the group's summary (``stop_reason``) and logged, with a
:class:`TuningWarning` when mostly skipped proposals left the group short.

**Multi-fidelity pruning.** When the accuracy function takes a ``fidelity``
(:mod:`panther.tuner.fidelity`) and the backend screens (its
``intermediate_fidelities()``, e.g. ``OptunaSearch``'s ``(0.25,)``), each new trial is
first evaluated at those fractions of the validation data. After each screen the loop
reports a higher-is-better value to the backend (``report_intermediate``, Optuna's
``trial.report`` + ``should_prune``):

* when the score is the accuracy (no ``optmization_eval_func``): the screened accuracy,
  corrected by the original model's accuracy at the same fidelity
  (``acc_f - base_f + base``, an estimate of the full-fidelity accuracy);
* otherwise (speed is the score, the accuracy a constraint): the estimate's shortfall
  below the threshold, ``min(0, estimate - threshold)``, so a pruner only ever stops the
  trials that look least feasible; a trial that looks feasible reports 0 and always goes on.

A trial is also stopped without the pruner when its screened drop is far beyond the
allowed one (:func:`~panther.tuner.fidelity.screen_rejects`). A stopped trial is recorded
with status ``pruned`` (Optuna state PRUNED): it counts as one evaluation toward the
budget, but costs only its screens, and is never accepted or chosen: only a full
evaluation accepts. Without a threshold and with a speed score there is nothing to screen
for, so no trial is screened. ``report["pruning"][group]`` counts the pruned trials, the
full evaluations and the cost in full-evaluation units.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from panther.tuner import guided, plugins
from panther.tuner.fidelity import check_ladder, screen_rejects, supports_fidelity
from panther.tuner.groups import LayerGroup
from panther.tuner.run import Run
from panther.tuner.search.base import SearchAlgorithm, finite_space_size, params_key
from panther.tuner.trials import PruneCheck, TrialRecord, evaluate_params

__all__ = ["TuningWarning", "GroupSearch", "PenaltyScale", "evaluation_budget",
           "expected_evaluations", "stall_limit", "run_group"]

#: At most this many proposals per unit of the evaluation budget (skipped and cached
#: proposals don't use it up; this keeps a search that keeps proposing them finite).
PROPOSALS_PER_EVALUATION = SearchAlgorithm.PROPOSAL_CAP_FACTOR
#: The shortest streak of re-proposed (cached) configurations that ends a search.
MIN_STALL = 20
# Penalty grades (relative accuracy shortfall equivalents) for trials with no accuracy.
_FAILED_GRADE = 2.0
_SKIPPED_GRADE = 1.0
_PRUNED_GRADE = 1.0


class TuningWarning(UserWarning):
    """Something in a tuning run the user should know about (nothing qualified, budget hit...)."""


@dataclass
class PenaltyScale:
    """Finite stand-ins for infeasible scores, below every feasible score told so far."""

    low: float | None = None
    high: float | None = None

    def observe(self, value: float) -> None:
        """Widen the scale to include the feasible score ``value``."""
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    def penalty(self, grade: float) -> float:
        """A finite score below every observed one, lower for a larger ``grade``."""
        if self.low is None:
            base, span = 0.0, 1.0
        else:
            base = min(0.0, self.low)
            span = max(abs(self.low), abs(self.high), 1e-9)
        return base - span * (1.0 + max(0.0, grade))


@dataclass
class GroupSearch:
    """One group's search in progress.

    ``count`` numbers every proposal (trial records); ``evaluated`` counts those that
    ran the evaluation functions, the ones the budget is about (skipped and cached
    proposals are free). ``seen`` maps a configuration to its first record (the cache).
    """

    group: LayerGroup
    search: Any
    budget: int | None = None
    count: int = 0
    evaluated: int = 0
    streak: int = 0
    stop_reason: str | None = None
    seen: dict[tuple[Any, ...], TrialRecord] = field(default_factory=dict)
    scale: PenaltyScale = field(default_factory=PenaltyScale)
    accepts: frozenset[str] = frozenset()
    #: The fidelities each new trial is screened at (``None`` until the first evaluation).
    ladder: tuple[float, ...] | None = None


def evaluation_budget(search: Any, max_trials: int | None) -> int | None:
    """Evaluations per group: the backend's ``n_trials`` (when it has one), capped by ``max_trials``."""
    limits = [max_trials, getattr(search, "n_trials", None)]
    limits = [v for v in limits if isinstance(v, int) and not isinstance(v, bool)]
    return min(limits) if limits else None


def expected_evaluations(search: Any, groups: list[LayerGroup], max_trials: int | None) -> int | None:
    """Evaluations a whole run expects, for the progress bar (``None`` when unbounded).

    Each group evaluates at most its budget, and never more than its space holds.
    """
    budget = evaluation_budget(search, max_trials)
    total = 0
    for group in groups:
        caps = [n for n in (budget, finite_space_size(group.space)) if n is not None]
        if not caps:
            return None
        total += min(caps)
    return total or None


def stall_limit(budget: int | None) -> int:
    """Re-proposals in a row after which a group's search ends (the sampler has converged).

    ``MIN_STALL``, or a quarter of the evaluation budget when that is larger.
    """
    return max(MIN_STALL, (budget or 0) // 4)


def _accepted_keywords(method: Callable[..., Any]) -> frozenset[str]:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"evaluated", "values", "attrs", "constraint"})
    return frozenset(p.name for p in params)


def _at_proposal_cap(search: Any) -> bool:
    """Whether a backend stopped at its own proposal cap (``SearchAlgorithm.proposal_cap``)."""
    try:
        cap = search.proposal_cap()
        return cap is not None and search.n_proposed >= cap
    except (AttributeError, TypeError):
        return False  # a backend outside the SearchAlgorithm contract: nothing to say


def run_group(run: Run, group: LayerGroup, search_algorithm: Any) -> GroupSearch:
    """Run ``group``'s search to its end; the records go to ``run.records``.

    Returns the finished :class:`GroupSearch` (its ``stop_reason`` says why it ended).
    """
    search = search_algorithm.spawn(group.key)
    budget = evaluation_budget(search, run.settings.max_trials)
    cap = None if budget is None else PROPOSALS_PER_EVALUATION * budget
    search.initialize(dict(group.space))
    state = GroupSearch(group=group, search=search, budget=budget,
                        accepts=_accepted_keywords(search.update))
    run.current = state
    _restore_previous(run, state)
    size = finite_space_size(group.space)
    stall = stall_limit(budget)
    dedupe = run.settings.dedupe
    while True:
        if not run.time_left():
            run.stop_reason = state.stop_reason = "time_budget_s"
            warnings.warn(f"time_budget_s={run.settings.time_budget_s} s spent; stopping with the "
                          "results found so far", TuningWarning, stacklevel=4)
            break
        if budget is not None and state.evaluated >= budget:
            state.stop_reason = "budget"
            break
        if cap is not None and state.count >= cap:
            state.stop_reason = "proposal_cap"
            _explain_short(run, state)
            break
        if dedupe and size is not None and len(state.seen) >= size:
            state.stop_reason = "space_exhausted"  # every configuration has been handled
            break
        if dedupe and state.streak >= stall:
            state.stop_reason = "converged"
            _explain_short(run, state)
            break
        if search.is_finished() or (params := search.get_next_params()) is None:
            state.stop_reason = "backend_finished"
            if budget is not None and state.evaluated < budget and _at_proposal_cap(search):
                state.stop_reason = "proposal_cap"
                _explain_short(run, state)  # the backend hit its own proposal cap
            break
        _answer(run, state, dict(params))
    _pruning_summary(run, state)
    return state


def _pruning_summary(run: Run, state: GroupSearch) -> None:
    """``report["pruning"][group]``: the screens, pruned trials, full evaluations and cost."""
    if not state.ladder:
        return
    records = [r for r in run.group_records(state.group.key) if r.evaluated and not r.resumed]
    run.results.info.setdefault("pruning", {})[state.group.key] = {
        "fidelities": list(state.ladder),
        "pruned": sum(r.status == "pruned" for r in records),
        "full_evaluations": sum(r.status != "pruned" for r in records),
        "evaluation_cost": round(sum(r.evaluation_cost for r in records), 6),
    }


def _screen_ladder(run: Run, state: GroupSearch) -> tuple[float, ...]:
    """The fidelities to screen this group's trials at (``()``: evaluate them fully only).

    Screens need an evaluator that takes a ``fidelity``, a backend that prunes, one
    objective, and something to screen for (a threshold, or the accuracy as the score).
    The original model is evaluated once at each fidelity, the reference of the screens.
    """
    if state.ladder is not None:
        return state.ladder
    state.ladder = ()
    settings = run.settings
    wanted = getattr(state.search, "intermediate_fidelities", None)
    if (wanted is None or settings.multi_objective or not supports_fidelity(settings.accuracy_eval_func)
            or (run.threshold is None and settings.optimization_eval_func is not None)):
        return state.ladder
    ladder = check_ladder(wanted())
    try:
        for fidelity in ladder:
            if fidelity not in run.baseline_at and run.baseline["accuracy"] is not None:
                try:
                    run.baseline_at[fidelity] = run.eval_accuracy(fidelity)
                finally:
                    run.restore_modes()
    except Exception as exc:
        warnings.warn(f"[{state.group.key}] the accuracy function failed at a low fidelity on the "
                      f"original model ({type(exc).__name__}: {exc}); trials are evaluated at full "
                      "fidelity only. Fix the fidelity argument (see panther.tuner.fidelity) or "
                      "pass pruner='none'", TuningWarning, stacklevel=5)
        return state.ladder
    state.ladder = ladder
    return ladder


def _prune_check(run: Run, state: GroupSearch, params: dict[str, Any]) -> PruneCheck:
    """The check :func:`~panther.tuner.trials.evaluate_params` calls after each screen."""
    thr = run.threshold
    base = run.baseline["accuracy"]
    by_accuracy = run.settings.optimization_eval_func is None

    def check(fidelity: float, accuracy: float) -> str | None:
        base_f = run.baseline_at.get(fidelity)
        estimate = accuracy if base is None or base_f is None else accuracy - base_f + base
        value = estimate if by_accuracy or thr is None else min(0.0, estimate - thr)
        stop = state.search.report_intermediate(params, value, fidelity)
        where = f"pruned at fidelity {fidelity:g} (accuracy {accuracy:.4f} there"
        if thr is not None and base is not None and base_f is not None and screen_rejects(
                base_f, accuracy, max(base - thr, 0.0), fidelity):
            return f"{where}, {base_f:.4f} for the original model: far below the threshold)"
        return f"{where}; stopped by the pruner)" if stop else None

    return check


def _explain_short(run: Run, state: GroupSearch) -> None:
    """Say why a group ended with fewer evaluations than its budget."""
    if state.budget is None or state.evaluated >= state.budget:
        return
    records = run.group_records(state.group.key)
    skipped = sum(r.status == "skipped" for r in records)
    what = (f"[{state.group.key}] stopped after {state.count} proposals with "
            f"{state.evaluated} of {state.budget} evaluations")
    if skipped * 2 >= len(records):
        warnings.warn(f"{what}: most proposals were skipped without evaluation (the "
                      "'error' column says why, usually no cheaper than the original layer). "
                      "Narrow the parameter space to cheaper values (e.g. lower ranks) or pass "
                      "skip_costlier=False", TuningWarning, stacklevel=5)
    elif state.stop_reason == "converged":
        warnings.warn(f"{what}: the sampler re-proposed {state.streak} already evaluated "
                      "configurations in a row, so the space is exhausted for it (it has converged). "
                      "Widen the parameter space, or lower n_trials", TuningWarning, stacklevel=5)
    else:
        # Mostly repeats of evaluated points: the search has converged, nothing is wrong.
        run.log(f"{what}: the search keeps re-proposing evaluated configurations (converged)")


def _restore_previous(run: Run, state: GroupSearch) -> None:
    """Rebuild records of trials a persistent backend ran before (resume after a kill).

    Reads the backend's ``resumed_trials``: dicts with ``params``, ``score`` and
    ``attrs`` (what :func:`_tell` stored), as :class:`OptunaSearch` provides.
    Resumed evaluations count toward the group's budget.
    """
    resumed = getattr(state.search, "resumed_trials", None)
    for entry in resumed if isinstance(resumed, list) else ():
        params, value = entry.get("params", {}), entry.get("score")
        stored = (entry.get("attrs") or {}).get("panther_row")
        if isinstance(stored, dict):
            record = TrialRecord.from_row(stored)
        else:
            # A trial from another tool: all we know is its score.
            record = TrialRecord(status="ok", score=float(value), told=float(value), eval_time_s=None)
        record.layer_name = state.group.key
        record.params = dict(params)
        record.trial_number = state.count
        record.resumed = True
        run.records.append(record)
        state.count += 1
        state.evaluated += record.evaluated
        if record.status != "cached":
            state.seen.setdefault(params_key(params), record)
        if record.status == "ok" and not run.settings.multi_objective:
            state.scale.observe(float(record.score))


def _answer(run: Run, state: GroupSearch, params: dict[str, Any]) -> None:
    """Answer one proposal: from the cache for a repeat, else by evaluating it; then tell."""
    started = run.elapsed()
    key = params_key(params)
    cached = state.seen.get(key) if run.settings.dedupe else None
    if cached is not None:
        record = TrialRecord(
            status="cached", score=cached.score if cached.status == "ok" else -math.inf,
            accuracy=cached.accuracy, speed=cached.speed, seeds=dict(cached.seeds), error=cached.error,
            eval_time_s=0.0, wall_time_s=run.elapsed() - started, cached_from=cached.trial_number,
            cached_status=cached.status, speed_median=cached.speed_median)
        state.streak += 1
        _record(run, state, params, record, cached.told, cached.constraint)
        return
    state.streak = 0
    ladder = _screen_ladder(run, state)
    record = evaluate_params(run, state.group, params, ladder,
                             _prune_check(run, state, params) if ladder else None)
    record.wall_time_s = run.elapsed() - started
    # Beside what was measured, what the weights' spectrum predicted (issue 16).
    record.predicted_error = guided.predict_group(run, state.group, params)
    told, constraint = _told_value(run, state, record)
    state.seen[key] = record
    _record(run, state, params, record, told, constraint)


def _record(run: Run, state: GroupSearch, params: dict[str, Any], record: TrialRecord,
            told: Any, constraint: float | None) -> None:
    record.layer_name = state.group.key
    record.params = dict(params)
    record.trial_number = state.count
    record.told = told
    record.constraint = constraint
    state.count += 1
    run.add_record(record)
    _tell(run, state, params, record)
    if record.evaluated:
        state.evaluated += 1
    if run.settings.verbose:
        run.log(describe(record))
    plugins.emit("panther_trial_finished", layer_name=state.group.key, trial=record.to_event())


def describe(record: TrialRecord) -> str:
    """One log line for a trial."""
    parts = [f"[{record.layer_name}] trial {record.trial_number} {record.status}: {record.params}"]
    if record.accuracy is not None:
        parts.append(f"accuracy={record.accuracy:.4f}")
    if record.speed is not None:
        parts.append(f"speed={record.speed:.4g}")
    parts.append(f"score={record.score:.4g}")
    if record.error:
        parts.append(f"({record.error})")
    return " ".join(parts)


def _tell(run: Run, state: GroupSearch, params: dict[str, Any], record: TrialRecord) -> None:
    kwargs: dict[str, Any] = {"constraint": record.constraint}
    told = record.told
    if run.settings.multi_objective:
        # Multi-objective backends take the objective pair as ``values``; the
        # scalar score they also need is the speed (or its penalty).
        kwargs["values"] = tuple(told)
        score = told[1]
    else:
        score = told
    if not record.evaluated and "evaluated" in state.accepts:
        # The user's functions did not run: the backend learns from it, but it does
        # not use up n_trials. (An older backend without the keyword counts it.)
        kwargs["evaluated"] = False
    if "attrs" in state.accepts:
        # Persistent backends keep the record so a resumed run can rebuild its results.
        kwargs["attrs"] = {"panther_row": record.to_stored()}
    if record.status == "pruned":
        # Stopped at a low fidelity by the backend's screens: it ends the trial as pruned.
        state.search.prune(params, attrs=kwargs.get("attrs"))
        return
    state.search.update(params, score, **kwargs)


def _told_value(run: Run, state: GroupSearch, record: TrialRecord) -> tuple[Any, float | None]:
    """What the backend learns: a finite score (or objective pair) and the constraint."""
    thr = run.threshold
    status = record.status
    acc = record.accuracy
    multi = run.settings.multi_objective
    if status == "ok":
        constraint = None if thr is None else thr - acc
        if multi:
            return (float(acc), float(record.speed)), constraint
        state.scale.observe(record.score)
        return float(record.score), constraint
    if status == "rejected":
        shortfall = thr - acc
        grade = shortfall / max(abs(thr), 1e-12)
    elif status == "skipped":
        shortfall = None
        grade = _SKIPPED_GRADE
    elif status == "pruned":
        # Never fully evaluated (no full-fidelity accuracy); repeats are told this penalty.
        shortfall = None
        grade = _PRUNED_GRADE
    else:
        shortfall = None
        grade = _FAILED_GRADE
    if shortfall is None and thr is not None:
        shortfall = max(abs(thr), 1e-12) * (1.0 + grade)
    penalty = state.scale.penalty(grade) if run.settings.penalize_infeasible else -math.inf
    if multi:
        acc_value = float(acc) if acc is not None else -grade
        speed_scale = PenaltyScale()
        for r in state.seen.values():
            if r.status == "ok" and r.speed is not None:
                speed_scale.observe(r.speed)
        return (acc_value, speed_scale.penalty(grade)), shortfall
    return penalty, shortfall
