"""The state of one ``tune()``: :class:`Run`.

A :class:`Run` is created at the start of every ``SKAutoTuner.tune()`` and holds
everything that lives only as long as that call: the model and its saved
train/eval modes, the settings, the resolved accuracy threshold and the baseline,
the clock and the time budget, the log and progress bar, the trial records, and
the user's evaluation functions wrapped so their results are checked.
The parts of the tuner (:mod:`~panther.tuner.search_loop`,
:mod:`~panther.tuner.trials`, :mod:`~panther.tuner.combine`) take the Run
instead of reaching into the tuner object.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from panther.tuner.results import TuningResults, get_submodule
from panther.tuner.settings import TunerSettings
from panther.tuner.timing import restore_modes, save_modes
from panther.tuner.trials import BadValue, TrialRecord, finite_float

if TYPE_CHECKING:
    from panther.tuner.groups import LayerGroup

__all__ = ["Run"]


class Run:
    """One tuning run: the model, its settings, threshold, baseline, clock, log and records.

    Args:
        model: the user's model (modified only inside :func:`~panther.tuner.trials.swapped`).
        settings: the validated options.
        groups: the layer groups to tune.
        rng: the sketch-seed generator (owned by the tuner so runs continue its sequence).
        results: where the run's results go (trials, group summaries, selection, info).
    """

    def __init__(self, model: nn.Module, settings: TunerSettings, groups: list[LayerGroup],
                 rng: random.Random, results: TuningResults | None = None) -> None:
        self.model = model
        self.settings = settings
        self.groups = groups
        self.rng = rng
        self.results = results if results is not None else TuningResults()
        #: Every submodule's train/eval flag at the start, restored after each evaluation.
        self.modes = save_modes(model)
        #: The original module of every tuned layer (the swaps always put them back).
        self.modules: dict[str, nn.Module] = {
            name: get_submodule(model, name) for group in groups for name in group.layers}
        # Set by defer_baseline: called on first use of threshold / baseline.
        self._pending_baseline: Callable[[], None] | None = None
        self._threshold: float | None = (
            None if settings.constraint is None or settings.constraint.needs_baseline
            else settings.constraint.resolve())
        self._baseline: dict[str, float | None] = {"accuracy": None, "speed": None}
        #: The original model's accuracy at intermediate fidelities (multi-fidelity pruning).
        self.baseline_at: dict[float, float] = {}
        #: Warm re-measurements of the original model's speed (see the combiner).
        self.base_samples: list[float] = []
        #: Inputs of each tuned layer seen during the baseline evaluation (speed pre-check).
        self.captured_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        #: Every trial of the run, in order (mirrored into ``results.trials`` by :meth:`sync_trials`).
        self.records: list[TrialRecord] = []
        #: Why the run stopped early (``"time_budget_s"``), or ``None``.
        self.stop_reason: str | None = None
        self.start = time.perf_counter()
        self.bar: Any = None
        #: The group search in progress (a :class:`~panther.tuner.search_loop.GroupSearch`).
        self.current: Any = None
        self._dense_macs: dict[str, int] = {}

    # ---- clock, log, progress --------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    def time_left(self) -> bool:
        """Whether the wall-clock budget (``time_budget_s``) still allows work."""
        budget = self.settings.time_budget_s
        return budget is None or self.elapsed() < budget

    def log(self, message: str) -> None:
        """Print ``message`` when verbose (above the progress bar when there is one)."""
        if not self.settings.verbose:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message)

    def open_progress(self, total: int | None) -> None:
        """Show a progress bar of ``total`` evaluations when the settings ask for one."""
        if self.settings.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="tuning", unit="eval", leave=True)

    def close(self) -> None:
        """Close the progress bar and record the wall time."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.results.info["wall_time_s"] = self.elapsed()

    # ---- records ---------------------------------------------------------------------------
    def add_record(self, record: TrialRecord) -> None:
        """Keep ``record`` (and count it on the progress bar when it was evaluated)."""
        self.records.append(record)
        if record.evaluated and self.bar is not None:
            self.bar.update(1)

    def group_records(self, key: str) -> list[TrialRecord]:
        """The records of the group named ``key``, in order."""
        return [r for r in self.records if r.layer_name == key]

    def sync_trials(self) -> None:
        """Write the records into ``results.trials`` as manifest rows."""
        self.results.trials = [r.to_row() for r in self.records]

    # ---- the model -------------------------------------------------------------------------
    def restore_modes(self) -> None:
        """Give every submodule back the train/eval flag it had when the run started."""
        restore_modes(self.model, self.modes)

    def dense_macs(self, name: str, layer_type: Any) -> int:
        """The original layer ``name``'s MACs by its layer type's cost model (cached)."""
        macs = self._dense_macs.get(name)
        if macs is None:
            macs = self._dense_macs[name] = layer_type.cost(self.modules[name]).macs
        return macs

    # ---- the user's functions --------------------------------------------------------------
    def eval_accuracy(self, fidelity: float = 1.0) -> float:
        """The accuracy function on the model as it is now (a checked, finite float).

        Below ``fidelity=1`` it is called with ``fidelity=`` (the evaluator contract of
        :mod:`panther.tuner.fidelity`); at full fidelity exactly as the user wrote it.
        """
        fn = self.settings.accuracy_eval_func
        value = fn(self.model) if fidelity >= 1.0 else fn(self.model, fidelity=fidelity)
        return finite_float(value, "accuracy_eval_func")

    def eval_speed(self) -> float:
        """The optimisation function on the model as it is now (a checked, finite float)."""
        fn = self.settings.optimization_eval_func
        assert fn is not None
        return finite_float(fn(self.model), "optmization_eval_func")

    @property
    def threshold(self) -> float | None:
        """The resolved accuracy threshold (``None``: unconstrained)."""
        self._resolve_baseline()
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = value

    @property
    def baseline(self) -> dict[str, float | None]:
        """The original model's ``accuracy`` and ``speed`` (``None`` until measured)."""
        self._resolve_baseline()
        return self._baseline

    def defer_baseline(self, resolve: Callable[[], None]) -> None:
        """Have ``resolve`` set the baseline and threshold when either is first needed.

        Workers sharing a run use it to take the original model's accuracy another worker
        measures, instead of evaluating the original model each (see
        :mod:`panther.tuner.worker`).
        """
        self._pending_baseline = resolve

    def _resolve_baseline(self) -> None:
        pending, self._pending_baseline = self._pending_baseline, None
        if pending is not None:
            try:
                pending()
            except BaseException:
                self._pending_baseline = pending  # still owed: a later use tries again
                raise

    def measure_baseline(self) -> None:
        """Evaluate the original model once, resolve the threshold, capture layer inputs.

        Skipped when nothing needs it (no relative constraint, no verification, no
        speed pre-check); the threshold is then the absolute one, if any.
        """
        self._pending_baseline = None  # measuring supersedes a deferred baseline
        settings = self.settings
        info = self.results.info
        if not settings.needs_baseline:
            return
        hooks = []
        if settings.speed_precheck:
            for group in self.groups:
                for name in group.layers:
                    hooks.append(self.modules[name].register_forward_pre_hook(
                        self._capture_hook(name), with_kwargs=True))
        try:
            try:
                acc = self.eval_accuracy()
            finally:
                for h in hooks:
                    h.remove()
                self.restore_modes()
        except BadValue as exc:
            raise ValueError(
                f"evaluating the original model failed: {exc}; accuracy_eval_func must return a "
                "finite number for the untouched model (try it on tuner.model first)") from exc
        self.baseline["accuracy"] = acc
        if settings.optimization_eval_func is not None and (settings.verify or settings.multi_objective):
            try:
                self.baseline["speed"] = self.eval_speed()
            finally:
                self.restore_modes()
        if settings.constraint is not None:
            self.threshold = settings.constraint.resolve(acc)
        info["baseline_accuracy"] = acc
        info["baseline_speed"] = self.baseline["speed"]
        info["effective_threshold"] = self.threshold
        self.log(f"original model: accuracy={acc:.4f}"
                 + (f", speed={self.baseline['speed']:.4g}" if self.baseline["speed"] else "")
                 + (f"; threshold={self.threshold:.4f}" if self.threshold is not None else ""))

    def _capture_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in self.captured_inputs:
                detach = lambda v: v.detach() if isinstance(v, torch.Tensor) else v  # noqa: E731
                self.captured_inputs[name] = (tuple(detach(a) for a in args),
                                              {k: detach(v) for k, v in kwargs.items()})
        return hook
