"""The original model's accuracy, measured once for all the workers of a run.

A threshold relative to the original model's accuracy (``accuracy_tolerance``) needs that
accuracy. Workers share it through the run's bookkeeping study (``f"{prefix}#run"``, see
:func:`panther.tuner.storage.run_study_name`): the first worker measures it and publishes it
there; the others take it (see :func:`resolve_baseline`).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["BASELINE_ATTR", "MeasureBaselineFirst", "publish_baseline", "published_baseline",
           "resolve_baseline"]

#: User attribute of the run study's trial that publishes one measurement.
BASELINE_ATTR = "panther_baseline"


def publish_baseline(run: Any, run_study: Any) -> None:
    """Publish this worker's measurement of the original model and agree on the threshold.

    Each measurement is published as a completed trial of the run study, and every worker
    uses the one with the lowest trial number (trial numbers are assigned atomically by
    the storage, so every worker picks the same one).
    """
    import optuna

    constraint = run.settings.constraint
    if constraint is None or not constraint.needs_baseline:
        return
    acc, thr = run.baseline["accuracy"], run.threshold
    run_study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=float(acc),
        user_attrs={BASELINE_ATTR: {"accuracy": acc, "threshold": thr}}))
    _adopt(run, published_baseline(run_study))


def published_baseline(run_study: Any) -> dict[str, Any] | None:
    """The first published measurement of the original model (``{"accuracy", "threshold"}``),
    or None."""
    published = [t for t in run_study.get_trials(deepcopy=False) if BASELINE_ATTR in t.user_attrs]
    return min(published, key=lambda t: t.number).user_attrs[BASELINE_ATTR] if published else None


def _adopt(run: Any, first: dict[str, Any]) -> None:
    """Use the published measurement ``first`` as this worker's baseline and threshold."""
    run.baseline["accuracy"] = first["accuracy"]
    run.threshold = first["threshold"]
    run.results.info["baseline_accuracy"] = first["accuracy"]
    run.results.info["effective_threshold"] = first["threshold"]


class MeasureBaselineFirst(BaseException):  # noqa: N818 -- a signal, not an error
    """No worker is left to publish the original model's accuracy: this one must measure it.

    Raised where the threshold is first needed, which may be inside an evaluation, where
    the model holds a trial's layers; a ``BaseException`` so that the evaluation's
    error handling (which records a user function's errors as the trial's) lets it pass,
    and the layers are put back on its way out. The worker gives that trial up unevaluated
    and measures the original model.
    """


def resolve_baseline(run: Any, run_study: Any, lease: Any, ordinal: int, report: Any) -> None:
    """Resolve the accuracy threshold of a worker (``report``: its ``WorkerReport``); the
    original model is measured once per run.

    A threshold relative to the original model's accuracy needs that accuracy. The first
    worker (ordinal 0) measures it and publishes it in the run study; a worker that finds
    it published takes it; any other worker starts its first trial right away and takes
    the published value when the trial's result needs it (waiting for it then if need be).
    So N workers evaluate the original model once, not N times, and no worker idles
    while it is measured. If no worker that could publish it is left alive, the worker
    measures it itself. A speed pre-check needs each worker's own look at the original
    model (the inputs of its layers), so with one, every worker measures.
    """
    settings = run.settings
    constraint = settings.constraint
    if not settings.needs_baseline:
        return
    shared = constraint is not None and constraint.needs_baseline
    first = published_baseline(run_study) if shared else None
    if first is not None and not settings.speed_precheck:
        _adopt(run, first)
        return
    if ordinal == 0 or settings.speed_precheck or not shared:
        run.measure_baseline()
        report.baseline_measured = True
        publish_baseline(run, run_study)
        return

    def wait() -> None:
        from panther.tuner.storage import live_leases

        delay = 0.02
        while True:
            found = published_baseline(run_study)
            if found is not None:
                _adopt(run, found)
                return
            # Those who measure it: workers that started before this one.
            if not any(other.role == "worker" and other.number < lease.number
                       for other in live_leases(lease.storage, lease.run_name)):
                raise MeasureBaselineFirst
            time.sleep(delay)
            report.waiting_s += delay
            delay = min(2 * delay, 0.5)

    run.defer_baseline(wait)
