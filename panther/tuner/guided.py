"""The tuner's guided strategy: sensitivity-ordered, globally allocated, verified jointly.

:class:`~panther.tuner.tuner.SKAutoTuner` calls in here at three points:

* :func:`plan` before the baseline evaluation: whether the run can be guided, and a
  :class:`~panther.tuner.sensitivity.CalibrationProbe` that records calibration batches
  while the original model is evaluated;
* :func:`run` instead of the per-group searches and the back-off: every candidate of
  every group is built once and measured on the calibration batches (one forward each,
  recorded as a trial row with status ``"predicted"``), then
  :class:`~panther.tuner.allocation.GuidedSearch` allocates all groups together with real
  joint evaluations (screened at low fidelity when the accuracy function supports it);
* :func:`predict_group` / :func:`summarize_predictions` in the classic strategy, so its
  rows also carry the prediction beside the measured accuracy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from panther.tuner import plugins
from panther.tuner.allocation import Candidate, GuidedSearch, Probe
from panther.tuner.fidelity import supports_fidelity
from panther.tuner.results import get_submodule
from panther.tuner.search.base import finite_space_size
from panther.tuner.sensitivity import (
    CalibrationProbe,
    group_predicted_error,
    rank_correlation,
    singular_values,
)
from panther.tuner.trials import (
    TrialRecord,
    build_group,
    build_selection,
    cost_skip,
    draw_seeds,
    group_macs,
    swapped,
)

__all__ = [
    "MAX_CANDIDATES",
    "SCREEN_FIDELITY",
    "default_budget",
    "check_guided_options",
    "check_groups",
    "plan",
    "run_guided",
    "predict_group",
    "summarize_predictions",
]

#: A group's space may hold at most this many configurations for the guided strategy
#: (each is built and measured once on the calibration batches).
MAX_CANDIDATES = 512
#: Fidelity of the screens when the accuracy function accepts one.
SCREEN_FIDELITY = 0.25


def default_budget(n_groups: int) -> int:
    """Full-evaluation equivalents of a guided run without ``max_trials``: ``4 + 4 * groups``."""
    return 4 + 4 * n_groups


def check_guided_options(*, search_algorithm: Any, multi_objective: bool, verify: bool,
                         constrained: bool) -> None:
    """Raise ``ValueError`` for ``strategy="guided"`` with options it cannot honour."""
    if search_algorithm is not None:
        raise ValueError(
            "strategy='guided' chooses configurations itself and does not use a search_algorithm; "
            "drop search_algorithm, or use strategy='classic' to search with it")
    if multi_objective:
        raise ValueError("strategy='guided' optimises speed under an accuracy constraint; "
                         "multi_objective=True needs strategy='classic'")
    if not verify:
        raise ValueError("strategy='guided' always verifies the joint model; remove verify=False")
    if not constrained:
        raise ValueError("strategy='guided' needs an accuracy constraint: pass accuracy_threshold "
                         "or accuracy_tolerance (or use strategy='classic')")


class _Plan:
    """What a guided run needs before the baseline: the calibration probe."""

    def __init__(self, probe: CalibrationProbe) -> None:
        self.probe = probe

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Record calibration batches while the block evaluates the original model."""
        with self.probe.capture():
            yield

    def usable(self, run: Any) -> bool:
        """Whether the baseline left what the guided strategy needs (an effective threshold)."""
        return run.threshold is not None and run.baseline.get("accuracy") is not None


def _why_not(tuner: Any) -> str | None:
    """Why this tuner's run cannot be guided, or ``None`` when it can."""
    settings = tuner.settings
    if settings.multi_objective:
        return "multi_objective=True"
    if not settings.verify:
        return "verify=False"
    if settings.constraint is None:
        return "no accuracy constraint"
    for group in tuner.groups:
        if not group.copy_weights:
            return f"group {group.key!r} has copy_weights=False (errors are only predictable from copied weights)"
        size = finite_space_size(group.space)
        if size is None or size > MAX_CANDIDATES:
            return (f"group {group.key!r} has {'a continuous' if size is None else f'a {size}-point'} "
                    f"space (the guided strategy enumerates at most {MAX_CANDIDATES} points)")
        for name in group.layers:
            try:
                group.layer_types[name].cost(get_submodule(tuner.model, name))
            except NotImplementedError:
                return f"layer type {group.layer_types[name].name!r} has no cost model"
    return None


def check_groups(tuner: Any) -> None:
    """Raise ``ValueError`` when ``strategy="guided"`` cannot tune these groups."""
    reason = _why_not(tuner)
    if reason is not None:
        raise ValueError(f"strategy='guided' cannot tune this run: {reason}; "
                         "use strategy='classic' (or 'auto', which falls back to it)")


def plan(tuner: Any, info: dict[str, Any]) -> _Plan | None:
    """A :class:`_Plan` when this run is to be guided, else ``None`` (classic; ``info`` says why)."""
    strategy = tuner.settings.strategy
    if strategy == "classic" or (strategy == "auto" and tuner._search_given):
        return None
    if strategy == "guided":
        check_groups(tuner)
    reason = _why_not(tuner)
    if reason is not None:
        info["guided_unavailable"] = reason
        return None
    layers = [name for group in tuner.groups for name in group.layers]
    return _Plan(CalibrationProbe(tuner.model, layers))


# --- predictions ----------------------------------------------------------------------------------


def _svals(run: Any, name: str) -> Any:
    cache = run.__dict__.setdefault("_singular_values", {})
    if name not in cache:  # the originals do not change during a run
        try:
            cache[name] = singular_values(run.modules[name])
        except Exception:  # a factorisation that fails leaves the row without a prediction
            cache[name] = None
    return cache[name]


def predict_group(run: Any, group: Any, params: dict[str, Any]) -> float | None:
    """The group's predicted weight error for ``params`` (defaults filled in), or ``None``."""
    modules = {name: run.modules[name] for name in group.layers}
    full = dict(params)
    first = group.layers[0]
    fill = getattr(group.layer_types[first], "full_params", None)
    if fill is not None:
        try:
            full = dict(fill(modules[first], params))
        except Exception:
            return None
    svals = {}
    if full.get("init", "svd") == "svd":
        for name in group.layers:
            svals[name] = _svals(run, name)
            if svals[name] is None:
                return None
    try:
        return group_predicted_error(modules, full, svals)
    except Exception:
        return None


def summarize_predictions(run: Any) -> None:
    """Record how well the predicted error ranked the measured accuracies (classic runs)."""
    rows = [r for r in run.records if r.predicted_error is not None and r.accuracy is not None
            and r.status in ("ok", "rejected")]
    run.results.info["sensitivity"] = {
        "rows_with_prediction": len(rows),
        "rank_correlation_predicted_error_vs_accuracy_loss": rank_correlation(
            [r.predicted_error for r in rows], [-r.accuracy for r in rows]),
    }


# --- the guided run -------------------------------------------------------------------------------


def _enumerate(space: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(space)
    return [dict(zip(names, values)) for values in itertools.product(*(space[n].values() for n in names))]


def _candidates(run: Any, probe: CalibrationProbe) -> dict[str, list[Candidate]]:
    """Build and measure every configuration of every group once; one trial record each."""
    options: dict[str, list[Candidate]] = {}
    for group in run.groups:
        options[group.key] = cands = []
        for number, params in enumerate(_enumerate(group.space)):
            if not run.time_left():
                run.stop_reason = "time_budget_s"
                return options
            started = run.elapsed()
            record = TrialRecord(status="predicted", layer_name=group.key, params=dict(params),
                                 trial_number=number, eval_time_s=None)
            reason = cost_skip(run, group, params)
            if reason is not None:
                record.status, record.error = "skipped", reason
                _add(run, record, started)
                continue
            record.predicted_error = predict_group(run, group, params)
            try:
                built, record.seeds = build_group(run, group, params, draw_seeds(run, group, params))
            except Exception as exc:
                record.status = "failed"
                record.error = f"building the sketched layer failed: {type(exc).__name__}: {exc}"
                _add(run, record, started)
                continue
            errors = [probe.layer_error(name, built[name]) for name in group.layers]
            if all(e is not None for e in errors):
                record.layer_error = math.sqrt(sum(e * e for e in errors) / len(errors))
            if probe.has_model_inputs:
                with swapped(run, built):
                    record.model_error = probe.model_error()
            # The gain is the cost model's multiply-adds saved: deterministic and monotone in
            # the sketch size. (A timing per candidate was tried: on a busy machine its noise
            # dropped the best candidates; the chosen model's speed is measured at the end.)
            dense, sketched = group_macs(run, group, params)
            record.gain_macs = dense - sketched
            gain = float(record.gain_macs)
            error = next((e for e in (record.model_error, record.layer_error, record.predicted_error)
                          if e is not None), None)
            record.calibration_error = error
            if error is None:
                record.error = "no error measure (no calibration batches and no prediction)"
            else:
                cands.append(Candidate(group=group.key, params=dict(params), gain=gain,
                                       error=float(error), predicted_error=record.predicted_error,
                                       layer_error=record.layer_error, model_error=record.model_error,
                                       seeds=dict(record.seeds), trial_number=number))
            _add(run, record, started)
    return options


def _add(run: Any, record: TrialRecord, started: float) -> None:
    from panther.tuner.search_loop import describe

    record.wall_time_s = run.elapsed() - started
    run.add_record(record)
    if run.settings.verbose:
        extra = "".join(f" {k}={getattr(record, k):.3g}" for k in ("predicted_error", "calibration_error")
                        if getattr(record, k) is not None)
        run.log(describe(record) + extra)
    plugins.emit("panther_trial_finished", layer_name=record.layer_name, trial=record.to_event())


def _evaluate(run: Any, selection: dict[str, Any], fidelity: float) -> tuple[float | None, None, str | None]:
    """Accuracy of the model with ``selection`` swapped in, at ``fidelity`` (model always restored)."""
    try:
        built = build_selection(run, selection)
    except Exception as exc:
        return None, None, f"building failed: {type(exc).__name__}: {exc}"
    with swapped(run, built):
        try:
            return run.eval_accuracy(fidelity), None, None
        except Exception as exc:
            return None, None, f"{type(exc).__name__}: {exc}"


def run_guided(run: Any, combiner: Any, plan_: _Plan) -> None:
    """The guided strategy, in place of the per-group searches and ``Combiner.finalize``."""
    from panther.tuner.search_loop import TuningWarning

    settings = run.settings
    info = run.results.info
    probe = plan_.probe
    probe.finish()
    options = _candidates(run, probe)
    groups = {g.key: g for g in run.groups}
    n_groups = max(1, len(options))
    budget = settings.max_trials * n_groups if settings.max_trials is not None else default_budget(n_groups)
    screen = SCREEN_FIDELITY if supports_fidelity(settings.accuracy_eval_func) else None
    if run.bar is not None:
        run.bar.reset(total=budget)

    def selection_of(choice: dict[str, Candidate | None]) -> dict[str, Any]:
        sel: dict[str, Any] = {}
        for key, cand in choice.items():
            if cand is not None:
                sel.update(combiner.choices(groups[key], cand.params, cand.seeds))
        return sel

    def evaluate(choice: dict[str, Candidate | None], fidelity: float) -> Any:
        # Accuracy only: the search ranks by work saved; the chosen model's speed is
        # measured once at the end, against the original, alternately.
        out = _evaluate(run, selection_of(choice), fidelity)
        if run.bar is not None:
            run.bar.update(fidelity)
        acc = out[0]
        run.log(f"guided [{'full' if fidelity >= 1 else f'fidelity {fidelity:g}'}] "
                f"{ {k: (None if c is None else c.params) for k, c in choice.items()} }: "
                f"accuracy={'n/a' if acc is None else f'{acc:.4f}'}" + (f" ({out[2]})" if out[2] else ""))
        return out

    search = GuidedSearch(options, evaluate, run.threshold, run.baseline["accuracy"],
                          max_evaluations=budget, screen_fidelity=screen, time_left=run.time_left)
    best = search.run() if run.time_left() else None
    if run.stop_reason is None and not run.time_left():
        run.stop_reason = "time_budget_s"
    info["stopped_by"] = run.stop_reason
    if run.stop_reason == "time_budget_s":
        warnings.warn(f"time_budget_s={settings.time_budget_s} s spent; stopping with the results found "
                      "so far", TuningWarning, stacklevel=3)
    chosen: dict[str, Candidate | None] = {} if best is None else dict(best.choice)
    final_acc = None if best is None else best.accuracy
    run.results.selection = selection_of(chosen)
    base_speed, final_speed = _final_speed(run, combiner)
    if run.results.selection and base_speed is not None and final_speed is not None \
            and final_speed < base_speed:
        info["kept_original"] = sorted(k for k, c in chosen.items() if c is not None)
        chosen, run.results.selection = {}, {}
        final_speed, final_acc = base_speed, run.baseline["accuracy"]
        warnings.warn("the verified configuration measured slower than the original model; "
                      "apply_best_params() returns the original model", TuningWarning, stacklevel=3)
    elif not run.results.selection:
        why = (f"no configuration met the accuracy threshold {run.threshold:.4g}"
               if search.full_evaluations else "no configuration was evaluated")
        warnings.warn(f"{why}; apply_best_params() returns the original model", TuningWarning,
                      stacklevel=3)
        final_acc, final_speed = run.baseline["accuracy"], base_speed
    _summaries(run, chosen, search, final_acc, final_speed)
    info["verification"] = [_verification_entry(p, groups) for p in search.probes if p.fidelity >= 1.0]
    info["verified"] = True
    info["baseline_speed"] = base_speed
    info["final_accuracy"] = final_acc
    info["final_speed"] = final_speed
    info["speedup"] = (final_speed / base_speed) if (final_speed and base_speed) else None
    info["sketched_layers"] = sorted(run.results.selection)
    cands = [c for v in options.values() for c in v]
    full = [p for p in search.probes if p.fidelity >= 1.0 and p.accuracy is not None]
    info["guided"] = {
        "candidates": len(cands),
        "kept_after_pruning": sum(len(v) for v in search.options.values()),
        "path_length": len(getattr(search, "path", [])),
        "budget": budget,
        "cost": search.cost,
        "full_evaluations": search.full_evaluations,
        "screens": search.screens,
        "screened_out": search.screened_out,
        "screen_fidelity": screen,
        "probes": [p.to_dict() for p in search.probes],
    }
    with_prediction = [c for c in cands if c.predicted_error is not None]
    info["sensitivity"] = {
        "calibration_batches": len(probe.model_inputs) or max(
            (len(v) for v in probe.layer_inputs.values()), default=0),
        "rank_correlation_predicted_vs_calibration_error": rank_correlation(
            [c.predicted_error for c in with_prediction], [c.error for c in with_prediction]),
        "rank_correlation_proxy_vs_accuracy_loss": rank_correlation(
            [p.proxy for p in full], [-p.accuracy for p in full]),
    }
    run.log(f"guided: {search.full_evaluations} full evaluation(s), {search.screens} screen(s); "
            f"final accuracy={final_acc}, speedup={info['speedup']}")


def _final_speed(run: Any, combiner: Any) -> tuple[float | None, float | None]:
    """Speeds of the original and of the selection, measured alternately (warm).

    A selection that measures slower is re-measured with three times the runs before the
    caller gives up on it: on a busy machine one round of timings can be off by more than
    the gain of a modest sketch.
    """
    from panther.tuner.trials import evaluate_selection

    settings = run.settings
    if not run.results.selection or settings.optimization_eval_func is None:
        return run.baseline["speed"], None
    combiner.warm_baseline_speed()
    _, speed, error = evaluate_selection(run, run.results.selection, accuracy=False)
    if error is not None or speed is None:
        return run.baseline["speed"], None
    base, final = combiner.final_speeds(speed)
    if base is not None and final is not None and final < base and settings.remeasure_runs:
        saved = combiner.settings
        combiner.settings = dataclasses.replace(saved, remeasure_runs=3 * saved.remeasure_runs)
        try:
            base, final = combiner.final_speeds(final)
        finally:
            combiner.settings = saved
    return base, final


def _verification_entry(p: Probe, groups: dict[str, Any]) -> dict[str, Any]:
    layers = sorted(n for k, c in p.choice.items() if c is not None for n in groups[k].layers)
    return {"step": p.step, "layers": layers, "accuracy": p.accuracy, "speed": p.speed,
            "passed": p.passed, "error": p.error, "predicted_error": p.proxy,
            "choice": {k: (None if c is None else c.trial_number) for k, c in p.choice.items()}}


def _summaries(run: Any, chosen: dict[str, Candidate | None], search: GuidedSearch,
               final_acc: float | None, final_speed: float | None) -> None:
    from panther.tuner.combine import Option, record_group

    for group in run.groups:
        cand = chosen.get(group.key)
        best = None
        if cand is not None:
            score = final_speed if run.settings.optimization_eval_func is not None else final_acc
            best = Option(params=cand.params, seeds=cand.seeds, accuracy=final_acc, speed=final_speed,
                          score=score, trial_number=cand.trial_number)
        record_group(run, group, best, n_trials=len(run.group_records(group.key)),
                     n_evaluated=sum(1 for p in search.probes
                                     if p.fidelity >= 1.0 and p.choice.get(group.key) is not None),
                     stop_reason=run.stop_reason)
