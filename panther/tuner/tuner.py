"""SKAutoTuner: find sketching parameters that make a model faster at a given accuracy.

The tuner only orchestrates. Which modules can be sketched, how a sketched layer
is built, what its parameters and cost are, and how the search proposes
parameters all come from plugins (:mod:`panther.tuner.plugins`): layer types
(``LayerType``) and search algorithms (``SearchAlgorithm``). Nothing here knows
about a particular layer or backend.

How a run goes
--------------
1. At construction every :class:`~panther.tuner.config.LayerConfig` is resolved to
   module names, each module to the layer type that handles it, and the layers to
   *groups*: with ``separate=True`` one group per layer, with ``separate=False`` one
   group for all selected layers (with ``params="auto"``: one group per layer type
   and size). Parameter names are validated against each layer type here.
2. ``tune()`` measures the original model once (accuracy; speed when an
   optimisation function is given), then runs one search per group
   (``search_algorithm.spawn(group_key)``). A trial builds the sketched layer(s),
   swaps them into the model, evaluates, and always puts the original modules back.
   Proposals the cost model skips and repeats answered from the cache are told to the
   backend with ``evaluated=False``: it learns from them, but they do not use up the
   evaluation budget (``n_trials`` / ``max_trials``).
3. After the searches the winners are combined, the combined model is evaluated
   and, if it misses the accuracy threshold, per-group choices are re-allocated
   globally under the accuracy budget and re-verified (see :meth:`SKAutoTuner.tune`).

That is the *classic* strategy. Under an accuracy constraint without a user-chosen
backend the default is the *guided* strategy (:mod:`panther.tuner.guided`): every
candidate is measured on calibration batches captured during the baseline evaluation,
and all groups are allocated together by :class:`~panther.tuner.allocation.GuidedSearch`,
whose joint evaluations (screened at low fidelity when the accuracy function takes a
``fidelity``) verify the result. ``SKAutoTuner(strategy="classic")`` turns it off.

Scores
------
* ``accuracy_threshold`` set and accuracy below it: the trial is *rejected*, its
  score is ``-inf`` and the optimisation function is **not** called.
* otherwise the score is the optimisation function's value, or the accuracy when
  there is none.

Search backends are never told ``-inf``: a rejected (or failed, or skipped) trial is
reported as a finite penalty below every feasible score seen so far, graded by the
accuracy shortfall, together with ``constraint=shortfall`` for backends that model
constraints. The user-visible score stays ``-inf``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from panther.tuner import guided, plugins
from panther.tuner.combine import Combiner, pareto_front_mask
from panther.tuner.config import LayerConfig, TuningConfigs
from panther.tuner.groups import LayerGroup, form_groups
from panther.tuner.results import LayerChoice, TuningResults, get_submodule, load_tuning_results
from panther.tuner.run import Run
from panther.tuner.search.base import SearchAlgorithm
from panther.tuner.search_loop import TuningWarning, expected_evaluations, run_group
from panther.tuner.settings import DEFAULT_N_TRIALS, STRATEGIES, TunerSettings
from panther.tuner.trials import SEED_MAX

__all__ = ["SKAutoTuner", "DEFAULT_N_TRIALS", "STRATEGIES", "TuningWarning"]

# Options that live in TunerSettings and are exposed as (validated) tuner attributes.
_SETTING_ATTRIBUTES = ("accuracy_eval_func", "optimization_eval_func", "num_runs_per_param", "verbose",
                       "multi_objective", "max_trials", "time_budget_s", "progress", "skip_costlier",
                       "speed_precheck", "remeasure_top", "remeasure_runs", "verify",
                       "max_backoff_steps", "dedupe", "strategy")


class SKAutoTuner:
    """Tune the sketching parameters of a model's layers under an accuracy constraint.

    Args:
        model: the model to tune. It is modified only *during* trials and always
            restored (also on errors and Ctrl-C); :meth:`apply_best_params` returns
            a tuned deep copy by default, so ``model`` stays the original.
        configs: a :class:`TuningConfigs` (or a list of / a single :class:`LayerConfig`).
        accuracy_eval_func: ``model -> float``, higher is better.
        search_algorithm: a :class:`~panther.tuner.search.base.SearchAlgorithm`
            instance, or the name of a registered one (``"optuna"``, ``"grid"``, ...).
            ``None`` means Optuna (TPE, seeded with ``seed``) with ``DEFAULT_N_TRIALS``
            (30) trials per group (in ``multi_objective`` mode: two maximised objectives).
            A backend's integer ``n_trials`` is the number of *evaluations* per group:
            skipped and cached proposals are told with ``update(..., evaluated=False)``
            and do not use it up (see ``max_trials``).
            Each group runs on ``search_algorithm.spawn(group_key)``; the object you
            pass stays available as ``tuner.search_algorithm`` (for Optuna,
            ``.study``/``.studies`` hold the per-group studies).
        verbose: print a line per trial, the final report, and show a progress bar.
        accuracy_threshold: absolute minimum accuracy (same units as
            ``accuracy_eval_func``); trials below it are rejected.
        optmization_eval_func: ``model -> float`` to maximise (e.g. throughput). The
            tutorial's spelling; ``optimization_eval_func`` is accepted too (not both).
        num_runs_per_param: evaluate each configuration this many times, each with a
            fresh sketch seed, and keep the **best** run (not the mean); the winning
            run's seeds are recorded so the tuned model is rebuilt exactly.
        optimization_eval_func: correctly spelled alias of ``optmization_eval_func``.
        accuracy_tolerance: instead of ``accuracy_threshold``, allowed loss relative to
            the original model's accuracy, measured once at the start of ``tune()``.
        tolerance_mode: ``"relative"``: threshold = original - |original| * tolerance
            (99% of the original for a positive score and tolerance 0.01);
            ``"absolute"``: threshold = original - tolerance.
        multi_objective: search accuracy and speed together (needs an optimisation
            function and a backend that accepts two objectives, e.g. Optuna with
            ``directions``); see :meth:`pareto_front`.
        max_trials: at most this many evaluations per group (on top of the backend's own
            ``n_trials``). Proposals that are skipped by the cost model / pre-check or
            answered from the cache are free: they are told to the backend (so it learns)
            but do not use up the budget; at most ``10 x budget`` proposals are made, and a
            finite space ends the search once every point has been handled.
        time_budget_s: wall-clock budget for the whole ``tune()``; when spent, the run
            stops and keeps everything found so far.
        progress: show a tqdm progress bar (default: when ``verbose``).
        skip_costlier: skip, without evaluating, configurations whose cost model says
            they do no less work (MACs) than the original layer(s).
        speed_precheck: time each candidate layer alone on the captured inputs of the
            original layer and skip it when it is not faster than the dense layer.
        remeasure_top: re-measure the speed of this many top candidates per group
            (``remeasure_runs`` more times each) and pick the winner by median speed.
        remeasure_runs: extra speed measurements per re-measured candidate.
        verify: evaluate the combined tuned model after the searches and, with an
            accuracy constraint, re-allocate until it meets it (see :meth:`tune`).
        max_backoff_steps: how many re-allocations to try before giving up.
        dedupe: evaluate each distinct configuration of a group once; a repeated
            suggestion reuses the recorded result (status ``"cached"``) and is still
            told to the backend. ``False`` re-evaluates repeats.
        seed: seeds the tuner's sketch-seed generator (reproducible runs).
        strategy: how configurations are chosen. ``"classic"``: one search per group
            (the backend), then the combination is verified and repaired. ``"guided"``:
            candidates are ordered by their predicted and calibration-measured errors and
            all groups are allocated together, verified by joint evaluations (see
            :mod:`panther.tuner.allocation`); it needs an accuracy constraint, finite
            spaces and weight-copying layers with cost models. ``"auto"`` (default):
            ``"guided"`` when no ``search_algorithm`` was given and all that holds, else
            ``"classic"``. The run's choice is ``report["strategy"]``.
    """

    def __init__(
        self,
        model: nn.Module,
        configs: TuningConfigs | list[LayerConfig] | LayerConfig,
        accuracy_eval_func: Callable[[nn.Module], float],
        search_algorithm: Any = None,
        verbose: bool = False,
        accuracy_threshold: float | None = None,
        optmization_eval_func: Callable[[nn.Module], float] | None = None,
        num_runs_per_param: int = 1,
        *,
        optimization_eval_func: Callable[[nn.Module], float] | None = None,
        accuracy_tolerance: float | None = None,
        tolerance_mode: str = "absolute",
        multi_objective: bool = False,
        max_trials: int | None = None,
        time_budget_s: float | None = None,
        progress: bool | None = None,
        skip_costlier: bool = True,
        speed_precheck: bool = False,
        remeasure_top: int = 3,
        remeasure_runs: int = 2,
        verify: bool = True,
        max_backoff_steps: int = 8,
        dedupe: bool = True,
        seed: int | None = 0,
        strategy: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        #: The validated options of every run (frozen; the attributes below read and replace it).
        self.settings = TunerSettings.from_kwargs(
            accuracy_eval_func, optmization_eval_func=optmization_eval_func,
            optimization_eval_func=optimization_eval_func, accuracy_threshold=accuracy_threshold,
            accuracy_tolerance=accuracy_tolerance, tolerance_mode=tolerance_mode, progress=progress,
            verbose=verbose, num_runs_per_param=num_runs_per_param, multi_objective=multi_objective,
            max_trials=max_trials, time_budget_s=time_budget_s, skip_costlier=skip_costlier,
            speed_precheck=speed_precheck, remeasure_top=remeasure_top, remeasure_runs=remeasure_runs,
            verify=verify, max_backoff_steps=max_backoff_steps, dedupe=dedupe, seed=seed,
            strategy=strategy)
        if strategy == "guided":
            guided.check_guided_options(search_algorithm=search_algorithm,
                                        multi_objective=multi_objective, verify=verify,
                                        constrained=self.settings.constraint is not None)
        self._search_given = search_algorithm is not None
        self.model = model
        if isinstance(configs, LayerConfig):
            configs = TuningConfigs([configs])
        elif not isinstance(configs, TuningConfigs):
            configs = TuningConfigs(configs)
        if not configs:
            raise ValueError("configs is empty; give at least one LayerConfig")
        self.configs = configs
        self._seed = seed
        self._rng = random.Random(seed)
        self.search_algorithm = self._resolve_search(search_algorithm)
        self.groups: list[LayerGroup] = form_groups(model, configs)
        if strategy == "guided":
            guided.check_groups(self)
        self._results = TuningResults()
        self._results.info["model_class"] = type(model).__name__
        self._tuned = False
        self._threshold: float | None = self.accuracy_threshold
        self._run: Run | None = None

    # ------------------------------------------------------------------ options
    @property
    def accuracy_threshold(self) -> float | None:
        """The absolute accuracy threshold given (``None`` with a tolerance or no constraint)."""
        c = self.settings.constraint
        return c.amount if c is not None and c.kind == "absolute" else None

    @property
    def accuracy_tolerance(self) -> float | None:
        """The allowed accuracy loss given (``None`` with an absolute threshold or none)."""
        c = self.settings.constraint
        return c.amount if c is not None and c.kind != "absolute" else None

    @property
    def tolerance_mode(self) -> str:
        """``"relative"`` for a relative tolerance, else ``"absolute"`` (the keyword's values)."""
        c = self.settings.constraint
        return "relative" if c is not None and c.kind == "relative" else "absolute"

    @property
    def _penalize_infeasible(self) -> bool:
        # Ablation switch for benchmarks (see TunerSettings.penalize_infeasible).
        return self.settings.penalize_infeasible

    @_penalize_infeasible.setter
    def _penalize_infeasible(self, value: bool) -> None:
        self.settings = dataclasses.replace(self.settings, penalize_infeasible=bool(value))

    def _resolve_search(self, search_algorithm: Any) -> Any:
        multi = self.settings.multi_objective
        if search_algorithm is None:
            kwargs: dict[str, Any] = {"n_trials": DEFAULT_N_TRIALS, "seed": self._seed}
            if multi:
                kwargs["directions"] = ["maximize", "maximize"]
            return plugins.get_search_algorithm("optuna", **kwargs)
        if isinstance(search_algorithm, str):
            kwargs = {"directions": ["maximize", "maximize"]} if multi else {}
            return plugins.get_search_algorithm(search_algorithm, **kwargs)
        if not isinstance(search_algorithm, SearchAlgorithm):
            raise TypeError(
                "search_algorithm must be a SearchAlgorithm instance (OptunaSearch, SkoptSearch, "
                f"GridSearch, RandomSearch, ...) or a registered name, got {type(search_algorithm).__name__}"
            )
        if multi and len(getattr(search_algorithm, "directions", None) or ()) < 2:
            raise ValueError(
                "multi_objective=True needs a search backend with two objectives, e.g. "
                "OptunaSearch(directions=['maximize', 'maximize']); "
                f"{type(search_algorithm).__name__} was given without them"
            )
        return search_algorithm

    # ------------------------------------------------------------------ public API
    @property
    def results(self) -> TuningResults:
        """The :class:`~panther.tuner.results.TuningResults` of the last run (or load)."""
        return self._results

    @property
    def report(self) -> dict[str, Any]:
        """Baseline and final verified accuracy/speed, threshold and verification steps."""
        return dict(self._results.info)

    @property
    def selected_params(self) -> dict[str, dict[str, Any]]:
        """Per tuned layer, the params :meth:`apply_best_params` builds (after verification)."""
        return {name: dict(c.params) for name, c in self._results.selection.items()}

    def tune(self) -> dict[str, dict[str, Any]]:
        """Run every group's search, then choose and verify the combined configuration.

        Returns:
            ``{layer_name: {"params": dict | None, "score": float}}``: each group's
            search winner (each layer of a joint group gets the group's entry;
            ``params`` is ``None`` and ``score`` ``-inf`` when nothing was feasible).
            With ``remeasure_top`` the score of a speed winner is its median speed.

        After the searches, with ``verify=True`` (default), the original model's speed
        is re-measured warm, groups whose winner is not faster than the original are
        left original, and the combined model is evaluated. Without an accuracy
        constraint the winners are used as they are.
        With one, if the winners together miss the threshold, the per-group choice is
        re-made globally: each group's measured (accuracy drop, speed gain) options
        are allocated knapsack-style under the accuracy budget, the result is
        evaluated, and the budget is halved until a combination meets the threshold.
        When nothing does, a :class:`TuningWarning` is issued and
        :meth:`apply_best_params` returns the original model. :attr:`report` holds
        the final verified accuracy and speed.

        With the guided strategy (``report["strategy"] == "guided"``) there are no per-group
        searches: each group's entry is its part of the verified joint choice (``params``
        ``None`` for a group left original) and the score is the final speed (or accuracy).

        Ctrl-C (``KeyboardInterrupt``) restores the model's original layers, keeps
        all trials recorded so far (the per-group winners become the selection,
        unverified) and re-raises the interrupt. Errors raised by the evaluation
        functions do not stop the run: the trial is recorded as ``"failed"``.
        """
        run = Run(self.model, self.settings, self.groups, self._rng)
        self._run = run
        self._results = run.results
        info = run.results.info
        info.update({
            "model_class": type(self.model).__name__,
            "accuracy_threshold": self.accuracy_threshold,
            "accuracy_tolerance": self.accuracy_tolerance,
            "tolerance_mode": self.tolerance_mode if self.accuracy_tolerance is not None else None,
            "multi_objective": self.settings.multi_objective,
            "num_runs_per_param": self.settings.num_runs_per_param,
        })
        self._threshold = run.threshold
        combiner = Combiner(run)
        if getattr(self.search_algorithm, "storage", None) is not None \
                and hasattr(self.search_algorithm, "fingerprint"):
            # A stored study made for another model or config is refused, not reused.
            from panther.tuner.fingerprint import tuner_fingerprint

            self.search_algorithm.fingerprint = tuner_fingerprint(self)
        open_run = getattr(self.search_algorithm, "open_run", None)
        if callable(open_run):
            # Before the baseline: a second live process on the same storage is refused
            # before it spends an evaluation (OptunaSearch takes its lease here).
            open_run()
        run.open_progress(expected_evaluations(self.search_algorithm, self.groups, self.settings.max_trials))
        try:
            plan = guided.plan(self, info)
            with plan.capturing() if plan is not None else contextlib.nullcontext():
                run.measure_baseline()
            self._threshold = run.threshold
            info["strategy"] = "guided" if plan is not None and plan.usable(run) else "classic"
            if info["strategy"] == "guided":
                guided.run_guided(run, combiner, plan)
            else:
                for group in self.groups:
                    if run.stop_reason is not None:
                        break
                    state = run_group(run, group, self.search_algorithm)
                    combiner.finish_group(state)
                combiner.finalize()
                guided.summarize_predictions(run)
        except KeyboardInterrupt:
            run.restore_modes()
            combiner.summarize_unfinished()
            run.results.selection = combiner.winner_selection()
            info["verified"] = False
            info["interrupted"] = True
            self._tuned = True
            raise
        finally:
            run.sync_trials()
            run.close()
            close = getattr(self.search_algorithm, "close", None)
            if callable(close):
                close()  # e.g. OptunaSearch releases its lease on the storage
        self._tuned = True
        plugins.emit("panther_tuning_finished", results=self._results)
        return self._results.best_params()

    def run_worker(self, storage: str | None = None, **kwargs: Any) -> Any:
        """Work on a tuning run shared by several processes or machines through ``storage``.

        Start it in every worker process, each with a tuner built the same way; then call
        :meth:`finalize` once. See :func:`panther.tuner.worker.run_worker` for the options
        (``device``, ``heartbeat_interval``...) and docs/distributed.md for the guide.
        Returns a :class:`~panther.tuner.worker.WorkerReport`.
        """
        from panther.tuner.worker import run_worker

        return run_worker(self, storage, **kwargs)

    def finalize(self, storage: str | None = None, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Gather a shared run's trials and verify the combination exactly as :meth:`tune` does.

        Evaluates no new configuration; afterwards :attr:`results`, :meth:`apply_best_params`
        and the other accessors work as after :meth:`tune`. See
        :func:`panther.tuner.worker.finalize` (``wait``, ``timeout``).
        """
        from panther.tuner.worker import finalize

        return finalize(self, storage, **kwargs)

    def get_best_params(self) -> dict[str, dict[str, Any]]:
        """Same as :meth:`tune`'s return value: per layer, the search winner's params and score."""
        self._require_results()
        return self._results.best_params()

    def get_results_dataframe(self) -> Any:
        """A pandas DataFrame with one row per trial.

        Columns: ``layer_name`` (the group name; joint groups are ``"a+b+c"``), one
        column per parameter, ``score`` (``-inf`` for rejected/failed/skipped trials),
        ``accuracy``, ``speed`` (NaN when not measured), ``trial_number`` (per group),
        ``status`` (``ok``/``rejected``/``failed``/``skipped``/``cached``), ``error``
        (error text or skip reason), ``wall_time_s`` and ``speed_median`` (for
        re-measured candidates).
        """
        return self._results.to_dataframe()

    def apply_best_params(self, inplace: bool = False) -> nn.Module:
        """Return the model with the chosen configuration (:attr:`selected_params`) in place.

        What is applied:

        * after :meth:`tune` with ``verify=True``: the combination verified on the whole
          model (at or above the accuracy threshold). It can differ from :meth:`tune`'s
          per-group winners: groups not faster than the original, or dropped/re-chosen by
          the back-off, keep another option or their original layer. When nothing
          qualifies this is the original model (a :class:`TuningWarning` was issued);
        * with ``verify=False``: every group's search winner, unverified;
        * after an interrupted :meth:`tune`: the winners found so far, unverified (warns);
        * after :meth:`load_tuning_results`: the loaded selection.

        Each layer is rebuilt from its recorded params and sketch seed, so the result
        is the exact model that was evaluated. By default a deep copy is tuned and
        returned and ``self.model`` stays the original (so both can be compared);
        ``inplace=True`` modifies ``self.model``.
        """
        self._require_results()
        if self._results.info.get("interrupted"):
            warnings.warn("tuning was interrupted: the applied configuration (each group's best "
                          "so far) was not verified on the combined model", TuningWarning, stacklevel=2)
        return self._results.apply(self.model, inplace=inplace)

    def replace_without_tuning(self, inplace: bool = False) -> nn.Module:
        """Sketch every selected layer with the first value of each parameter, without searching.

        Returns a deep copy (or ``self.model`` with ``inplace=True``). For ``"auto"``
        spaces the first value of the layer type's auto space is used.
        """
        results = TuningResults()
        for group in self.groups:
            params = {name: spec.first() for name, spec in group.space.items()}
            for name in group.layers:
                module = get_submodule(self.model, name)
                results.selection[name] = LayerChoice(
                    layer_name=name, layer_type=group.layer_types[name].name,
                    module_class=type(module).__name__, params=dict(params),
                    seed=self._rng.randrange(1, SEED_MAX), copy_weights=group.copy_weights)
        return results.apply(self.model, inplace=inplace)

    def visualize_tuning_results(self, save_path: str | None = None, show_plot: bool = False) -> Any:
        """Plot score/accuracy/speed over trials, best-so-far and params vs score per group.

        Returns the matplotlib figure; saves a PNG when ``save_path`` is given. Works headless.
        """
        from panther.tuner.visualizer import plot_tuning_results

        self._require_results()
        return plot_tuning_results(
            self.get_results_dataframe(), save_path=save_path, show_plot=show_plot,
            param_columns=self._results.param_names(),
            accuracy_threshold=self._results.info.get("effective_threshold", self.accuracy_threshold),
        )

    def pareto_front(self) -> Any:
        """The non-dominated (accuracy, speed) trials of each group, as a DataFrame.

        Uses every completed (``"ok"``) trial, so it works with any backend; in
        ``multi_objective`` mode it is what the search optimises.
        """
        self._require_results()
        df = self.get_results_dataframe()
        ok = df[(df["status"] == "ok") & df["accuracy"].notna() & df["speed"].notna()]
        keep = []
        for _, part in ok.groupby("layer_name", sort=False):
            mask = pareto_front_mask(part["speed"].to_numpy(), part["accuracy"].to_numpy())
            keep.extend(part.index[mask])
        return df.loc[keep].sort_values(["layer_name", "accuracy"], ascending=[True, False])

    def plot_pareto_front(self, save_path: str | None = None, show_plot: bool = False) -> Any:
        """Scatter of accuracy vs speed per group with the Pareto front highlighted."""
        df = self.get_results_dataframe()
        front = self.pareto_front()
        names = list(dict.fromkeys(df["layer_name"]))
        size = (5 * max(1, len(names)), 4)
        if show_plot:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=size)
        else:
            # A bare Figure needs no GUI backend and leaves pyplot's state alone.
            from matplotlib.figure import Figure

            fig = Figure(figsize=size)
        axes = fig.subplots(1, max(1, len(names)), squeeze=False)
        for ax, name in zip(axes[0], names):
            part = df[(df["layer_name"] == name) & (df["status"] == "ok")]
            ax.scatter(part["speed"], part["accuracy"], s=14, alpha=0.5, label="trials")
            fp = front[front["layer_name"] == name].sort_values("speed")
            ax.plot(fp["speed"], fp["accuracy"], "o-", color="C3", label="Pareto front")
            if self._threshold is not None:
                ax.axhline(self._threshold, color="gray", ls="--", lw=1, label="threshold")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("speed")
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7)
        fig.tight_layout()
        if save_path is not None:
            fig.savefig(save_path, dpi=100)
        if show_plot:
            plt.show()
        return fig

    def save_tuning_results(self, path: str) -> None:
        """Save the results as a JSON manifest (whatever the suffix, ``.pkl`` included).

        The manifest records, per tuned layer, its layer type, params and sketch seed,
        plus every trial row. It never contains pickled objects.
        """
        self._require_results()
        self._results.save(path)

    def load_tuning_results(self, path: str) -> TuningResults:
        """Load a saved manifest into this tuner (so :meth:`apply_best_params` uses it)."""
        results = load_tuning_results(path)
        for name in results.selection:
            get_submodule(self.model, name)  # raises naming the missing layer
        self._results = results
        self._tuned = True
        return results

    # ------------------------------------------------------------------ internals
    def _require_results(self) -> None:
        if not self._tuned:
            raise RuntimeError("no tuning results yet: call tune() (or load_tuning_results()) first")


def _setting_property(name: str) -> property:
    def get(self: SKAutoTuner) -> Any:
        return getattr(self.settings, name)

    def set(self: SKAutoTuner, value: Any) -> None:  # noqa: A001 - a property's setter
        # Re-validated like the constructor's arguments.
        self.settings = dataclasses.replace(self.settings, **{name: value})

    return property(get, set, doc=f"The ``{name}`` option (see :class:`SKAutoTuner`).")


for _name in _SETTING_ATTRIBUTES:
    setattr(SKAutoTuner, _name, _setting_property(_name))
del _name
