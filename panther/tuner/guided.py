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

import itertools
import math
import time
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

__all__ = [
    "MAX_CANDIDATES",
    "SCREEN_FIDELITY",
    "default_budget",
    "check_guided_options",
    "check_groups",
    "plan",
    "run",
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

    def usable(self, tuner: Any) -> bool:
        """Whether the baseline left what the guided strategy needs (an effective threshold)."""
        return tuner._threshold is not None and tuner._baseline.get("accuracy") is not None


def _why_not(tuner: Any) -> str | None:
    """Why this run cannot be guided, or ``None`` when it can."""
    if tuner.multi_objective:
        return "multi_objective=True"
    if not tuner.verify:
        return "verify=False"
    if tuner.accuracy_threshold is None and tuner.accuracy_tolerance is None:
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


def plan(tuner: Any) -> _Plan | None:
    """A :class:`_Plan` when this run is to be guided, else ``None`` (classic)."""
    if tuner.strategy == "classic" or (tuner.strategy == "auto" and tuner._search_given):
        return None
    if tuner.strategy == "guided":
        check_groups(tuner)
    reason = _why_not(tuner)
    if reason is not None:
        tuner._results.info["guided_unavailable"] = reason
        return None
    layers = [name for group in tuner.groups for name in group.layers]
    return _Plan(CalibrationProbe(tuner.model, layers))


# --- predictions ----------------------------------------------------------------------------------


def _svals(tuner: Any, name: str) -> Any:
    cache = tuner.__dict__.setdefault("_singular_values", {})
    module = get_submodule(tuner.model, name)
    weight = getattr(module, "weight", None)
    key = (name, id(weight), getattr(weight, "_version", None))
    if key not in cache:
        try:
            cache[key] = singular_values(module)
        except Exception:  # a factorisation that fails leaves the row without a prediction
            cache[key] = None
    return cache[key]


def predict_group(tuner: Any, group: Any, params: dict[str, Any]) -> float | None:
    """The group's predicted weight error for ``params`` (defaults filled in), or ``None``."""
    modules = {name: get_submodule(tuner.model, name) for name in group.layers}
    full = dict(params)
    for name in group.layers:
        fill = getattr(group.layer_types[name], "full_params", None)
        if fill is not None:
            try:
                full = {**fill(modules[name], params)}
            except Exception:
                return None
            break
    svals = {}
    for name in group.layers:
        if full.get("init", "svd") == "svd":
            svals[name] = _svals(tuner, name)
            if svals[name] is None:
                return None
    try:
        return group_predicted_error(modules, full, svals)
    except Exception:
        return None


def summarize_predictions(tuner: Any) -> None:
    """Record how well the predicted error ranked the measured accuracies (classic runs)."""
    rows = [r for r in tuner._results.trials
            if r.get("predicted_error") is not None and r.get("accuracy") is not None
            and r.get("status") in ("ok", "rejected")]
    corr = rank_correlation([r["predicted_error"] for r in rows], [-r["accuracy"] for r in rows])
    tuner._results.info["sensitivity"] = {
        "rows_with_prediction": len(rows),
        "rank_correlation_predicted_error_vs_accuracy_loss": corr,
    }


# --- the guided run -------------------------------------------------------------------------------


def _enumerate(space: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(space)
    return [dict(zip(names, values)) for values in itertools.product(*(space[n].values() for n in names))]


def _candidates(tuner: Any, probe: CalibrationProbe) -> dict[str, list[Candidate]]:
    """Build and measure every configuration of every group once; one trial row each."""
    options: dict[str, list[Candidate]] = {}
    for group in tuner.groups:
        options[group.key] = cands = []
        number = 0
        for params in _enumerate(group.space):
            if not tuner._time_left():
                tuner._stop_reason = "time_budget_s"
                return options
            started = time.perf_counter()
            row: dict[str, Any] = {"layer_name": group.key, "params": dict(params),
                                   "trial_number": number, "score": -math.inf, "accuracy": None,
                                   "speed": None, "seeds": {}, "error": ""}
            number += 1
            reason = tuner._cost_skip(group, params)
            if reason is not None:
                row.update(status="skipped", error=reason)
                _add_row(tuner, row, started)
                continue
            predicted = predict_group(tuner, group, params)
            try:
                built, seeds = tuner._build_group(group, params, tuner._draw_seeds(group, params))
            except Exception as exc:
                row.update(status="failed",
                           error=f"building the sketched layer failed: {type(exc).__name__}: {exc}")
                _add_row(tuner, row, started)
                continue
            layer_errors = [probe.layer_error(name, built[name]) for name in group.layers]
            layer_error = (None if any(e is None for e in layer_errors)
                           else math.sqrt(sum(e * e for e in layer_errors) / len(layer_errors)))
            model_error = None
            if probe.has_model_inputs:
                originals = tuner._swap_in(built)
                try:
                    model_error = probe.model_error()
                finally:
                    tuner._swap_back(originals)
            error = next((e for e in (model_error, layer_error, predicted) if e is not None), None)
            dense, sketched = tuner._group_macs(group, params)
            row.update(status="predicted", seeds=seeds, predicted_error=predicted,
                       calibration_error=error, layer_error=layer_error, model_error=model_error,
                       gain_macs=dense - sketched)
            if error is None:
                row["error"] = "no error measure (no calibration batches and no prediction)"
            else:
                cands.append(Candidate(group=group.key, params=dict(params), gain=float(dense - sketched),
                                       error=float(error), predicted_error=predicted,
                                       layer_error=layer_error, model_error=model_error,
                                       seeds=dict(seeds), trial_number=row["trial_number"]))
            _add_row(tuner, row, started)
    return options


def _add_row(tuner: Any, row: dict[str, Any], started: float) -> None:
    row["wall_time_s"] = time.perf_counter() - started
    tuner._results.trials.append(row)
    tuner._log(tuner._describe_row(row)
               + (f" predicted_error={row['predicted_error']:.3g}" if row.get("predicted_error") is not None else "")
               + (f" calibration_error={row['calibration_error']:.3g}" if row.get("calibration_error") is not None else ""))
    plugins.emit("panther_trial_finished", layer_name=row["layer_name"], trial=tuner._public_row(row))


def run(tuner: Any, plan_: _Plan) -> None:
    """The guided strategy, in place of the per-group searches and ``_finalize``."""
    from panther.tuner.tuner import TuningWarning

    info = tuner._results.info
    probe = plan_.probe
    probe.finish()
    options = _candidates(tuner, probe)
    groups = {g.key: g for g in tuner.groups}
    n_groups = max(1, len(options))
    budget = tuner.max_trials * n_groups if tuner.max_trials is not None else default_budget(n_groups)
    screen = SCREEN_FIDELITY if supports_fidelity(tuner.accuracy_eval_func) else None
    if tuner._bar is not None:
        tuner._bar.reset(total=budget)

    def selection_of(choice: dict[str, Candidate | None]) -> dict[str, Any]:
        sel: dict[str, Any] = {}
        for key, cand in choice.items():
            if cand is not None:
                sel.update(tuner._choices(groups[key], cand.params, cand.seeds))
        return sel

    def evaluate(choice: dict[str, Candidate | None], fidelity: float) -> Any:
        # Accuracy only: the search ranks by work saved; the chosen model's speed is
        # measured once at the end, against the original, alternately.
        out = tuner._evaluate_selection(selection_of(choice), fidelity=fidelity, speed=False)
        if tuner._bar is not None:
            tuner._bar.update(fidelity)
        acc = out[0]
        tuner._log(f"guided [{'full' if fidelity >= 1 else f'fidelity {fidelity:g}'}] "
                   f"{ {k: (None if c is None else c.params) for k, c in choice.items()} }: "
                   f"accuracy={'n/a' if acc is None else f'{acc:.4f}'}"
                   + (f" ({out[2]})" if out[2] else ""))
        return out

    search = GuidedSearch(options, evaluate, tuner._threshold, tuner._baseline["accuracy"],
                          max_evaluations=budget, screen_fidelity=screen, time_left=tuner._time_left)
    if not tuner._time_left():
        best = None
    else:
        best = search.run()
    if tuner._stop_reason is None and not tuner._time_left():
        tuner._stop_reason = "time_budget_s"
    info["stopped_by"] = tuner._stop_reason
    if tuner._stop_reason == "time_budget_s":
        warnings.warn(f"time_budget_s={tuner.time_budget_s} s spent; stopping with the results found "
                      "so far", TuningWarning, stacklevel=3)
    chosen: dict[str, Candidate | None] = {} if best is None else dict(best.choice)
    final_acc = None if best is None else best.accuracy
    tuner._results.selection = selection_of(chosen)
    base_speed, final_speed = _final_speed(tuner)
    if tuner._results.selection and base_speed is not None and final_speed is not None \
            and final_speed < base_speed:
        info["kept_original"] = sorted(k for k, c in chosen.items() if c is not None)
        chosen, tuner._results.selection = {}, {}
        final_speed = base_speed
        final_acc = tuner._baseline["accuracy"]
        warnings.warn("the verified configuration was not faster than the original model; "
                      "apply_best_params() returns the original model", TuningWarning, stacklevel=3)
    elif not tuner._results.selection:
        why = (f"no configuration met the accuracy threshold {tuner._threshold:.4g}"
               if search.full_evaluations else "no configuration was evaluated")
        warnings.warn(f"{why}; apply_best_params() returns the original model", TuningWarning,
                      stacklevel=3)
        final_acc = tuner._baseline["accuracy"]
        final_speed = base_speed
    _summaries(tuner, options, chosen, search, final_acc, final_speed)
    info["verification"] = [_verification_entry(p, groups) for p in search.probes if p.fidelity >= 1.0]
    info["verified"] = True
    info["baseline_speed"] = base_speed
    info["final_accuracy"] = final_acc
    info["final_speed"] = final_speed
    info["speedup"] = (final_speed / base_speed) if (final_speed and base_speed) else None
    info["sketched_layers"] = sorted(tuner._results.selection)
    cands = [c for v in options.values() for c in v]
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
    info["sensitivity"] = {
        "calibration_batches": len(probe.model_inputs) or max((len(v) for v in probe.layer_inputs.values()), default=0),
        "rank_correlation_predicted_vs_calibration_error": rank_correlation(
            [c.predicted_error for c in cands if c.predicted_error is not None],
            [c.error for c in cands if c.predicted_error is not None]),
        "rank_correlation_proxy_vs_accuracy_loss": rank_correlation(
            [p.proxy for p in search.probes if p.fidelity >= 1.0 and p.accuracy is not None],
            [-p.accuracy for p in search.probes if p.fidelity >= 1.0 and p.accuracy is not None]),
    }
    tuner._log(f"guided: {search.full_evaluations} full evaluation(s), {search.screens} screen(s); "
               f"final accuracy={final_acc}, speedup={info['speedup']}")


def _final_speed(tuner: Any) -> tuple[float | None, float | None]:
    """Speeds of the original and of the selection, measured alternately (warm).

    A selection that measures no faster is re-measured with three times the runs before
    the caller gives up on it: on a busy machine one round of timings can be off by more
    than the gain of a modest sketch.
    """
    base = tuner._baseline["speed"]
    if not tuner._results.selection or tuner.optimization_eval_func is None:
        return base, None
    tuner._warm_baseline_speed()
    _, speed, error = tuner._evaluate_selection(tuner._results.selection, accuracy=False)
    if error is not None or speed is None:
        return tuner._baseline["speed"], None
    base, final = tuner._final_speeds(speed)
    if base is not None and final is not None and final < base and tuner.remeasure_runs:
        saved = tuner.remeasure_runs
        tuner.remeasure_runs = 3 * saved
        try:
            base, final = tuner._final_speeds(final)
        finally:
            tuner.remeasure_runs = saved
    return base, final


def _verification_entry(p: Probe, groups: dict[str, Any]) -> dict[str, Any]:
    layers = sorted(n for k, c in p.choice.items() if c is not None for n in groups[k].layers)
    return {"step": p.step, "layers": layers, "accuracy": p.accuracy, "speed": p.speed,
            "passed": p.passed, "error": p.error, "predicted_error": p.proxy,
            "choice": {k: (None if c is None else c.trial_number) for k, c in p.choice.items()}}


def _summaries(tuner: Any, options: dict[str, list[Candidate]], chosen: dict[str, Candidate | None],
               search: GuidedSearch, final_acc: float | None, final_speed: float | None) -> None:
    for group in tuner.groups:
        rows = [r for r in tuner._results.trials if r["layer_name"] == group.key]
        cand = chosen.get(group.key)
        score = None
        if cand is not None:
            score = final_speed if tuner.optimization_eval_func is not None else final_acc
        summary = {
            "layers": list(group.layers),
            "layer_types": {n: group.layer_types[n].name for n in group.layers},
            "module_classes": {n: type(get_submodule(tuner.model, n)).__name__ for n in group.layers},
            "param_names": list(group.space),
            "space": {k: repr(v) for k, v in group.space.items()},
            "copy_weights": group.copy_weights,
            "n_trials": len(rows),
            "n_evaluated": sum(1 for p in search.probes if p.fidelity >= 1.0
                               and p.choice.get(group.key) is not None),
            "best_params": None if cand is None else dict(cand.params),
            "best_score": score,
            "best_seeds": None if cand is None else dict(cand.seeds),
            "best_trial": None if cand is None else cand.trial_number,
            "best_accuracy": None if cand is None else final_acc,
            "best_speed": None if cand is None else final_speed,
        }
        tuner._results.groups[group.key] = summary
        plugins.emit("panther_layer_finished", layer_name=group.key,
                     best_params=summary["best_params"], best_score=summary["best_score"])

