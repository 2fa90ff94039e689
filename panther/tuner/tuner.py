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

import inspect
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from panther.tuner import guided, plugins
from panther.tuner.config import LayerConfig, ParamSpec, TuningConfigs
from panther.tuner.results import (
    LayerChoice,
    TuningResults,
    build_layer,
    get_submodule,
    load_tuning_results,
    module_device_dtype,
    set_submodule,
)
from panther.tuner.search.base import SearchAlgorithm, finite_space_size
from panther.tuner.search.base import params_key as _params_key

__all__ = ["SKAutoTuner", "DEFAULT_N_TRIALS", "STRATEGIES", "TuningWarning"]

#: Trials per layer group of the default search (Optuna TPE) when none is given.
DEFAULT_N_TRIALS = 30
#: How ``SKAutoTuner(strategy=...)`` chooses configurations (see its docstring).
STRATEGIES = ("auto", "guided", "classic")

_SEED_MAX = 2**31 - 1
#: Statuses of proposals that did not run the evaluation functions (free for the budget).
_FREE_STATUSES = ("skipped", "cached")
# At most this many proposals per evaluation of the budget: skipped and cached proposals
# don't count toward ``n_trials``, and this cap keeps a search that keeps proposing them
# finite. The same factor as the backends' own cap, so both agree on when a group ends.
_PROPOSALS_PER_EVALUATION = SearchAlgorithm.PROPOSAL_CAP_FACTOR
# Penalty grades (relative accuracy shortfall equivalents) for trials with no accuracy.
_FAILED_GRADE = 2.0
_SKIPPED_GRADE = 1.0


class TuningWarning(UserWarning):
    """Something in a tuning run the user should know about (nothing qualified, budget hit...)."""


class _BadValue(ValueError):
    """A user evaluation function returned None, NaN or something that is not a number."""


@dataclass
class _Group:
    """Layers tuned by one search."""

    key: str
    layers: list[str]
    layer_types: dict[str, Any]
    space: dict[str, ParamSpec]
    copy_weights: bool


@dataclass
class _Option:
    """One candidate configuration of a group for the final combination."""

    params: dict[str, Any]
    seeds: dict[str, int | None]
    accuracy: float | None
    speed: float | None
    score: float
    trial_number: int
    gain: float = 0.0
    drop: float = 0.0


@dataclass
class _PenaltyScale:
    """Finite stand-ins for infeasible scores, below every feasible score told so far."""

    low: float | None = None
    high: float | None = None

    def observe(self, value: float) -> None:
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    def penalty(self, grade: float) -> float:
        if self.low is None:
            base, span = 0.0, 1.0
        else:
            base = min(0.0, self.low)
            span = max(abs(self.low), abs(self.high), 1e-9)
        return base - span * (1.0 + max(0.0, grade))


def _finite_float(value: Any, what: str) -> float:
    if value is None:
        raise _BadValue(f"{what} returned None")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise _BadValue(f"{what} returned a tensor of shape {tuple(value.shape)}, not a scalar")
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise _BadValue(f"{what} returned {value!r}, which is not a number") from exc
    if not math.isfinite(out):
        raise _BadValue(f"{what} returned {out}")
    return out


def _group_key(layers: list[str]) -> str:
    key = "+".join(layers)
    if len(key) <= 200:
        return key
    # Long joint groups get a short, still unique and deterministic name (study names are bounded).
    import hashlib

    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{layers[0]}+...+{layers[-1]}[{len(layers)}:{digest}]"


def _accepts_kwarg(fn: Callable[..., Any], name: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


def _at_proposal_cap(search: Any) -> bool:
    """Whether a backend stopped at its own proposal cap (``SearchAlgorithm.proposal_cap``)."""
    try:
        cap = search.proposal_cap()
        return cap is not None and search.n_proposed >= cap
    except (AttributeError, TypeError):
        return False  # a backend outside the SearchAlgorithm contract: nothing to say


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


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
        if not callable(accuracy_eval_func):
            raise TypeError("accuracy_eval_func must be a callable model -> float")
        if optmization_eval_func is not None and optimization_eval_func is not None:
            raise ValueError(
                "pass the optimisation function once: either optmization_eval_func (the tutorial's "
                "spelling) or optimization_eval_func, not both"
            )
        opt_fn = optmization_eval_func if optmization_eval_func is not None else optimization_eval_func
        if opt_fn is not None and not callable(opt_fn):
            raise TypeError("optmization_eval_func must be a callable model -> float")
        for what, fn in (("accuracy_eval_func", accuracy_eval_func), ("optmization_eval_func", opt_fn)):
            # Built-in evaluators say their direction; the tuner always maximises.
            if fn is not None and getattr(fn, "higher_is_better", True) is False:
                raise ValueError(
                    f"{what} {fn!r} is lower-is-better, but the tuner maximises; build it with "
                    "negate=True (returns -x) or inverse=True (returns 1/x)"
                )
        if isinstance(num_runs_per_param, bool) or not isinstance(num_runs_per_param, int) \
                or num_runs_per_param < 1:
            raise ValueError(f"num_runs_per_param must be an int >= 1, got {num_runs_per_param!r}")
        if accuracy_threshold is not None and accuracy_tolerance is not None:
            raise ValueError(
                "give either accuracy_threshold (absolute minimum accuracy) or accuracy_tolerance "
                "(allowed loss relative to the original model), not both"
            )
        if tolerance_mode not in ("relative", "absolute"):
            raise ValueError(f"tolerance_mode must be 'relative' or 'absolute', got {tolerance_mode!r}")
        if accuracy_tolerance is not None:
            accuracy_tolerance = float(accuracy_tolerance)
            if not math.isfinite(accuracy_tolerance) or accuracy_tolerance < 0:
                raise ValueError(f"accuracy_tolerance must be a finite number >= 0, got {accuracy_tolerance}")
        if accuracy_threshold is not None:
            accuracy_threshold = float(accuracy_threshold)
            if math.isnan(accuracy_threshold):
                raise ValueError("accuracy_threshold must be a number, got NaN")
        if multi_objective and opt_fn is None:
            raise ValueError("multi_objective=True needs optmization_eval_func (the second objective)")
        for name, value in (("max_trials", max_trials), ("remeasure_top", remeasure_top),
                            ("remeasure_runs", remeasure_runs), ("max_backoff_steps", max_backoff_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if time_budget_s is not None and not (float(time_budget_s) > 0):
            raise ValueError(f"time_budget_s must be > 0 seconds, got {time_budget_s!r}")

        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if strategy == "guided":
            guided.check_guided_options(search_algorithm=search_algorithm,
                                        multi_objective=multi_objective, verify=verify,
                                        constrained=accuracy_threshold is not None
                                        or accuracy_tolerance is not None)
        self.strategy = strategy
        self._search_given = search_algorithm is not None
        self.model = model
        if isinstance(configs, LayerConfig):
            configs = TuningConfigs([configs])
        elif not isinstance(configs, TuningConfigs):
            configs = TuningConfigs(configs)
        if not configs:
            raise ValueError("configs is empty; give at least one LayerConfig")
        self.configs = configs
        self.accuracy_eval_func = accuracy_eval_func
        self.optimization_eval_func = opt_fn
        self.accuracy_threshold = accuracy_threshold
        self.accuracy_tolerance = accuracy_tolerance
        self.tolerance_mode = tolerance_mode
        self.num_runs_per_param = num_runs_per_param
        self.verbose = bool(verbose)
        self.multi_objective = bool(multi_objective)
        self.max_trials = max_trials
        self.time_budget_s = None if time_budget_s is None else float(time_budget_s)
        self.progress = self.verbose if progress is None else bool(progress)
        self.skip_costlier = bool(skip_costlier)
        self.speed_precheck = bool(speed_precheck)
        self.remeasure_top = remeasure_top
        self.remeasure_runs = remeasure_runs
        self.verify = bool(verify)
        self.max_backoff_steps = max_backoff_steps
        self.dedupe = bool(dedupe)
        # Ablation switch for benchmarks: tell backends -inf for infeasible trials, as the
        # tutorial's reference algorithm does, instead of a graded finite penalty.
        self._penalize_infeasible = True
        self._seed = seed
        self._rng = random.Random(seed)

        self.search_algorithm = self._resolve_search(search_algorithm)
        self.groups: list[_Group] = self._build_groups()
        if strategy == "guided":
            guided.check_groups(self)
        self._results = TuningResults()
        self._results.info["model_class"] = type(model).__name__
        self._tuned = False
        self._bar: Any = None
        self._captured_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._threshold: float | None = accuracy_threshold
        self._baseline: dict[str, float | None] = {"accuracy": None, "speed": None}

    # ------------------------------------------------------------------ construction
    def _resolve_search(self, search_algorithm: Any) -> Any:
        if search_algorithm is None:
            kwargs: dict[str, Any] = {"n_trials": DEFAULT_N_TRIALS, "seed": self._seed}
            if self.multi_objective:
                kwargs["directions"] = ["maximize", "maximize"]
            return plugins.get_search_algorithm("optuna", **kwargs)
        if isinstance(search_algorithm, str):
            kwargs = {"directions": ["maximize", "maximize"]} if self.multi_objective else {}
            return plugins.get_search_algorithm(search_algorithm, **kwargs)
        if not isinstance(search_algorithm, SearchAlgorithm):
            raise TypeError(
                "search_algorithm must be a SearchAlgorithm instance (OptunaSearch, SkoptSearch, "
                f"GridSearch, RandomSearch, ...) or a registered name, got {type(search_algorithm).__name__}"
            )
        if self.multi_objective and len(getattr(search_algorithm, "directions", None) or ()) < 2:
            raise ValueError(
                "multi_objective=True needs a search backend with two objectives, e.g. "
                "OptunaSearch(directions=['maximize', 'maximize']); "
                f"{type(search_algorithm).__name__} was given without them"
            )
        return search_algorithm

    def _build_groups(self) -> list[_Group]:
        from panther.tuner.selection import select_layers

        groups: list[_Group] = []
        owner: dict[str, int] = {}
        for index, config in enumerate(self.configs):
            names = select_layers(self.model, config.layer_names)
            resolved: dict[str, Any] = {}
            for name in names:
                if name in owner:
                    raise ValueError(
                        f"layer {name!r} is selected by configs #{owner[name]} and #{index}; "
                        "each layer may be tuned by one LayerConfig only"
                    )
                owner[name] = index
                module = get_submodule(self.model, name)
                layer_type = plugins.layer_type_for(module)
                if layer_type is None:
                    supported = sorted(
                        f"{lt.name} ({', '.join(t.__name__ for t in lt.module_types)})"
                        for lt in plugins.layer_types()
                    )
                    raise ValueError(
                        f"layer {name!r} is a {type(module).__name__}, which no installed layer-type "
                        f"plugin can sketch (config #{index}, selector {config.layer_names!r}). "
                        f"Supported layer types: {supported}. Narrow the selector, e.g. add "
                        "{'type': 'Linear'}, or register a plugin for it"
                    )
                resolved[name] = layer_type
            if config.params == "auto":
                groups.extend(self._auto_groups(config, names, resolved))
            else:
                space = dict(config.params)
                if not config.separate:
                    self._check_joint(index, names, resolved)
                for name in names:
                    self._validate_space(index, name, resolved[name], space)
                if config.separate:
                    for name in names:
                        groups.append(_Group(name, [name], {name: resolved[name]}, space,
                                             config.copy_weights))
                else:
                    groups.append(_Group(_group_key(names), list(names), dict(resolved), space,
                                         config.copy_weights))
        keys = [g.key for g in groups]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"two layer groups got the same name: {keys} (a joint group is named by joining its "
                "layers with '+', which a layer's own name can clash with); tune the clashing "
                "layers in one LayerConfig, or give them all separate=True")
        return groups

    def _auto_groups(self, config: LayerConfig, names: list[str],
                     resolved: dict[str, Any]) -> list[_Group]:
        groups = []
        if config.separate:
            for name in names:
                space = resolved[name].auto_space(get_submodule(self.model, name))
                groups.append(_Group(name, [name], {name: resolved[name]}, dict(space),
                                     config.copy_weights))
            return groups
        # Joint "auto": one group per (layer type, size) so every member shares one space.
        buckets: dict[tuple[str, Any], list[str]] = {}
        for name in names:
            lt = resolved[name]
            buckets.setdefault((lt.name, lt.size_key(get_submodule(self.model, name))), []).append(name)
        for members in buckets.values():
            first = get_submodule(self.model, members[0])
            space = resolved[members[0]].auto_space(first)
            groups.append(_Group(_group_key(members), members, {n: resolved[n] for n in members},
                                 dict(space), config.copy_weights))
        return groups

    def _validate_space(self, index: int, name: str, layer_type: Any, space: dict[str, ParamSpec]) -> None:
        """Check every value of every parameter (others at their first value) against the layer."""
        module = get_submodule(self.model, name)
        first = {key: spec.first() for key, spec in space.items()}
        probes = [first]
        for key, spec in space.items():
            values = spec.values()
            if values is None:
                values = [getattr(spec, "low", None), getattr(spec, "high", None)]
            elif len(values) > 256:
                values = [values[0], values[-1]]
            probes.extend({**first, key: v} for v in values if v is not None)
        for probe in probes:
            try:
                layer_type.validate_params(module, probe)
            except (ValueError, TypeError) as exc:
                raise type(exc)(
                    f"config #{index}: params {probe} do not fit layer {name!r} "
                    f"({type(module).__name__}, layer type {layer_type.name!r}): {exc}"
                ) from exc

    def _check_joint(self, index: int, names: list[str], resolved: dict[str, Any]) -> None:
        kinds = {resolved[n].name for n in names}
        if len(kinds) > 1:
            # Mixed types may share one space only if every type accepts every name.
            param_sets = {resolved[n].name: set(resolved[n].param_names) for n in names}
            common = set.intersection(*param_sets.values())
            space = self.configs[index].params
            if isinstance(space, dict) and not set(space) <= common:
                raise ValueError(
                    f"config #{index} (separate=False) mixes layer types {sorted(kinds)} whose "
                    f"parameters differ ({ {k: sorted(v) for k, v in param_sets.items()} }); "
                    "a joint group needs parameters every type accepts. Use separate=True "
                    "or one LayerConfig per type"
                )

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
        self._results = TuningResults()
        info = self._results.info
        info.update({
            "model_class": type(self.model).__name__,
            "accuracy_threshold": self.accuracy_threshold,
            "accuracy_tolerance": self.accuracy_tolerance,
            "tolerance_mode": self.tolerance_mode if self.accuracy_tolerance is not None else None,
            "multi_objective": self.multi_objective,
            "num_runs_per_param": self.num_runs_per_param,
        })
        self._modes = {name: m.training for name, m in self.model.named_modules()}
        self._baseline = {"accuracy": None, "speed": None}
        self._threshold = self.accuracy_threshold
        self._captured_inputs = {}
        self._current: _GroupState | None = None
        self._base_samples: list[float] = []
        self._start = time.perf_counter()
        self._stop_reason: str | None = None
        self._bar = None
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._expected_evaluations(), desc="tuning", unit="eval",
                             leave=True)
        try:
            plan = guided.plan(self)
            if plan is not None:
                with plan.capturing():
                    self._measure_baseline()
            else:
                self._measure_baseline()
            info["strategy"] = "guided" if plan is not None and plan.usable(self) else "classic"
            if info["strategy"] == "guided":
                guided.run(self, plan)
            else:
                for group in self.groups:
                    if self._stop_reason is not None:
                        break
                    self._tune_group(group)
                self._finalize()
                guided.summarize_predictions(self)
        except KeyboardInterrupt:
            self._restore_modes()
            self._summarize_unfinished()
            self._results.selection = self._winner_selection()
            info["verified"] = False
            info["interrupted"] = True
            self._tuned = True
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            info["wall_time_s"] = time.perf_counter() - self._start
        self._tuned = True
        plugins.emit("panther_tuning_finished", results=self._results)
        return self._results.best_params()

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
                    seed=self._rng.randrange(1, _SEED_MAX), copy_weights=group.copy_weights)
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
            acc = part["accuracy"].to_numpy()
            spd = part["speed"].to_numpy()
            for i, idx in enumerate(part.index):
                dominated = ((acc >= acc[i]) & (spd >= spd[i]) & ((acc > acc[i]) | (spd > spd[i]))).any()
                if not dominated:
                    keep.append(idx)
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

    # ------------------------------------------------------------------ internals: helpers
    def _require_results(self) -> None:
        if not self._tuned:
            raise RuntimeError("no tuning results yet: call tune() (or load_tuning_results()) first")

    def _log(self, message: str) -> None:
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message)

    def _restore_modes(self) -> None:
        modes = getattr(self, "_modes", None)
        if not modes:
            return
        for name, module in self.model.named_modules():
            flag = modes.get(name)
            if flag is not None and module.training != flag:
                module.training = flag

    def _time_left(self) -> bool:
        if self.time_budget_s is None:
            return True
        return time.perf_counter() - self._start < self.time_budget_s

    def _eval_accuracy(self, fidelity: float = 1.0) -> float:
        if fidelity < 1.0:
            return _finite_float(self.accuracy_eval_func(self.model, fidelity=fidelity),
                                 "accuracy_eval_func")
        return _finite_float(self.accuracy_eval_func(self.model), "accuracy_eval_func")

    def _eval_speed(self) -> float:
        return _finite_float(self.optimization_eval_func(self.model), "optmization_eval_func")

    def _measure_baseline(self) -> None:
        """Evaluate the original model once (and capture layer inputs for the speed pre-check)."""
        info = self._results.info
        needs = (self.accuracy_tolerance is not None or self.verify or self.speed_precheck)
        if not needs:
            return
        hooks = []
        if self.speed_precheck:
            for group in self.groups:
                for name in group.layers:
                    hooks.append(get_submodule(self.model, name).register_forward_pre_hook(
                        self._capture_hook(name), with_kwargs=True))
        try:
            try:
                acc = self._eval_accuracy()
            finally:
                for h in hooks:
                    h.remove()
                self._restore_modes()
        except _BadValue as exc:
            raise ValueError(
                f"evaluating the original model failed: {exc}; accuracy_eval_func must return a "
                "finite number for the untouched model (try it on tuner.model first)") from exc
        self._baseline["accuracy"] = acc
        if self.optimization_eval_func is not None and (self.verify or self.multi_objective):
            try:
                self._baseline["speed"] = self._eval_speed()
            finally:
                self._restore_modes()
        if self.accuracy_tolerance is not None:
            if self.tolerance_mode == "relative":
                # |acc| keeps the threshold below the original for negative scores (-loss).
                self._threshold = acc - abs(acc) * self.accuracy_tolerance
            else:
                self._threshold = acc - self.accuracy_tolerance
        else:
            self._threshold = self.accuracy_threshold
        info["baseline_accuracy"] = acc
        info["baseline_speed"] = self._baseline["speed"]
        info["effective_threshold"] = self._threshold
        self._log(f"original model: accuracy={acc:.4f}"
                  + (f", speed={self._baseline['speed']:.4g}" if self._baseline["speed"] else "")
                  + (f"; threshold={self._threshold:.4f}" if self._threshold is not None else ""))

    def _capture_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in self._captured_inputs:
                detach = lambda v: v.detach() if isinstance(v, torch.Tensor) else v  # noqa: E731
                self._captured_inputs[name] = (tuple(detach(a) for a in args),
                                               {k: detach(v) for k, v in kwargs.items()})
        return hook

    # ------------------------------------------------------------------ internals: one group
    def _expected_evaluations(self) -> int | None:
        """Evaluations the whole run expects, for the progress bar (None when unbounded).

        Each group evaluates at most its budget, and never more than its space holds.
        """
        budget = self._evaluation_budget(self.search_algorithm)
        total = 0
        for group in self.groups:
            size = finite_space_size(group.space)
            caps = [n for n in (budget, size) if n is not None]
            if not caps:
                return None
            total += min(caps)
        return total or None

    def _evaluation_budget(self, search: Any) -> int | None:
        """Evaluations per group: the backend's ``n_trials`` (when it has one), capped by ``max_trials``."""
        limits = [self.max_trials, getattr(search, "n_trials", None)]
        limits = [v for v in limits if isinstance(v, int) and not isinstance(v, bool)]
        return min(limits) if limits else None

    def _tune_group(self, group: _Group) -> None:
        search = self.search_algorithm.spawn(group.key)
        # The backend finishes after its own n_trials evaluations (skipped and cached
        # proposals are told with evaluated=False); max_trials may cut it shorter, and
        # the proposal cap ends a group whose proposals are mostly free.
        budget = self._evaluation_budget(search)
        cap = None if budget is None else _PROPOSALS_PER_EVALUATION * budget
        search.initialize(dict(group.space))
        state = _GroupState(group=group, search=search)
        self._current = state
        self._restore_previous(state)
        size = finite_space_size(group.space)
        while True:
            if not self._time_left():
                self._stop_reason = "time_budget_s"
                warnings.warn(f"time_budget_s={self.time_budget_s} s spent; stopping with the results "
                              "found so far", TuningWarning, stacklevel=3)
                break
            if budget is not None and state.evaluated >= budget:
                break
            if cap is not None and state.count >= cap:
                self._stop_at_cap(state, budget)
                break
            if self.dedupe and size is not None and len(state.seen) >= size:
                break  # every configuration of a finite space has been handled
            if search.is_finished() or (params := search.get_next_params()) is None:
                if budget is not None and state.evaluated < budget and _at_proposal_cap(search):
                    self._stop_at_cap(state, budget)  # the backend hit its own proposal cap
                break
            self._run_trial(state, dict(params))
        self._finish_group(state)

    def _stop_at_cap(self, state: _GroupState, budget: int) -> None:
        """Say why a group ended with fewer evaluations than its budget."""
        rows = [r for r in self._results.trials if r["layer_name"] == state.group.key]
        skipped = sum(r["status"] == "skipped" for r in rows)
        what = (f"[{state.group.key}] stopped after {state.count} proposals with "
                f"{state.evaluated} of {budget} evaluations")
        if skipped * 2 >= len(rows):
            warnings.warn(f"{what}: most proposals were skipped without evaluation (the "
                          "'error' column says why, usually no cheaper than the original layer). "
                          "Narrow the parameter space to cheaper values (e.g. lower ranks) or pass "
                          "skip_costlier=False", TuningWarning, stacklevel=4)
        else:
            # Mostly repeats of evaluated points: the search has converged, nothing is wrong.
            self._log(f"{what}: the search keeps re-proposing evaluated configurations (converged)")

    def _restore_previous(self, state: _GroupState) -> None:
        """Rebuild rows of trials a persistent backend ran before (resume after a kill).

        Reads the backend's ``resumed_trials``: dicts with ``params``, ``score`` and
        ``attrs`` (what :meth:`_tell` stored), as :class:`OptunaSearch` provides.
        Resumed evaluations count toward the group's budget.
        """
        resumed = getattr(state.search, "resumed_trials", None)
        for entry in resumed if isinstance(resumed, list) else ():
            params, value = entry.get("params", {}), entry.get("score")
            stored = (entry.get("attrs") or {}).get("panther_row")
            if isinstance(stored, dict):
                row = {k: _decode_float(v) if k in ("score", "accuracy", "speed", "told") else v
                       for k, v in stored.items()}
            else:
                # A trial from another tool: all we know is its score.
                row = {"status": "ok", "score": float(value), "accuracy": None, "speed": None,
                       "seeds": {}, "error": "", "wall_time_s": None, "told": float(value)}
            row["layer_name"] = state.group.key
            row["params"] = dict(params)
            row["trial_number"] = state.count
            row["resumed"] = True
            row.setdefault("error", "")
            self._results.trials.append(row)
            state.count += 1
            state.evaluated += row["status"] not in _FREE_STATUSES
            key = _params_key(params)
            if row["status"] != "cached":
                state.seen.setdefault(key, row)
            if row["status"] == "ok" and not self.multi_objective:
                state.scale.observe(float(row["score"]))

    def _run_trial(self, state: _GroupState, params: dict[str, Any]) -> None:
        started = time.perf_counter()
        key = _params_key(params)
        cached = state.seen.get(key) if self.dedupe else None
        if cached is not None:
            row = {k: v for k, v in cached.items() if k not in ("trial_number", "resumed")}
            row.update(status="cached", wall_time_s=time.perf_counter() - started, eval_time_s=0.0,
                       cached_from=cached["trial_number"], error=cached.get("error", ""),
                       cached_status=cached["status"])
            if cached["status"] != "ok":
                row["score"] = -math.inf
            self._record(state, params, row, cached.get("told"), cached.get("constraint"))
            return
        row = self._evaluate(state, params)
        row["wall_time_s"] = time.perf_counter() - started
        row["predicted_error"] = guided.predict_group(self, state.group, params)
        told, constraint = self._told_value(state, row)
        state.seen[key] = row
        self._record(state, params, row, told, constraint)

    def _record(self, state: _GroupState, params: dict[str, Any], row: dict[str, Any],
                told: Any, constraint: float | None) -> None:
        row["layer_name"] = state.group.key
        row["params"] = dict(params)
        row["trial_number"] = state.count
        row["told"] = told
        row["constraint"] = constraint
        row.setdefault("error", "")
        state.count += 1
        self._results.trials.append(row)
        self._tell(state.search, params, told, constraint, row)
        if row["status"] not in _FREE_STATUSES:
            state.evaluated += 1
            if self._bar is not None:
                self._bar.update(1)
        self._log(self._describe_row(row))
        plugins.emit("panther_trial_finished", layer_name=state.group.key, trial=self._public_row(row))

    @staticmethod
    def _public_row(row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row.get(k) for k in ("layer_name", "score", "accuracy", "speed", "trial_number",
                                       "status", "error", "wall_time_s")}
        out.update(row.get("params", {}))
        return out

    @staticmethod
    def _describe_row(row: dict[str, Any]) -> str:
        parts = [f"[{row['layer_name']}] trial {row['trial_number']} {row['status']}: {row['params']}"]
        if row.get("accuracy") is not None:
            parts.append(f"accuracy={row['accuracy']:.4f}")
        if row.get("speed") is not None:
            parts.append(f"speed={row['speed']:.4g}")
        parts.append(f"score={row['score']:.4g}")
        if row.get("error"):
            parts.append(f"({row['error']})")
        return " ".join(parts)

    def _tell(self, search: Any, params: dict[str, Any], told: Any, constraint: float | None,
              row: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {"constraint": constraint}
        if self.multi_objective:
            # Multi-objective backends take the objective pair as ``values``; the
            # scalar score they also need is the speed (or its penalty).
            kwargs["values"] = tuple(told)
            score = told[1]
        else:
            score = told
        if row["status"] in _FREE_STATUSES and _accepts_kwarg(search.update, "evaluated"):
            # The user's functions did not run: the backend learns from it, but it does
            # not use up n_trials. (An older backend without the keyword counts it.)
            kwargs["evaluated"] = False
        if _accepts_kwarg(search.update, "attrs"):
            # Persistent backends keep the row so a resumed run can rebuild its results.
            kwargs["attrs"] = {"panther_row": self._storable_row(row)}
        search.update(params, score, **kwargs)

    @staticmethod
    def _storable_row(row: dict[str, Any]) -> dict[str, Any]:
        keep = ("status", "score", "accuracy", "speed", "seeds", "error", "wall_time_s",
                "eval_time_s", "told", "constraint", "cached_status")
        out = {}
        for k in keep:
            v = row.get(k)
            if isinstance(v, float) and not math.isfinite(v):
                v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            elif isinstance(v, str) and len(v) > 2000:
                v = v[:2000] + "..."  # storages cap attribute sizes; the start says what failed
            out[k] = v
        return out

    def _told_value(self, state: _GroupState, row: dict[str, Any]) -> tuple[Any, float | None]:
        """What the backend learns: a finite score (or objective pair) and the constraint."""
        thr = self._threshold
        status = row["status"]
        acc = row.get("accuracy")
        if status == "ok":
            constraint = None if thr is None else thr - acc
            if self.multi_objective:
                return (float(acc), float(row["speed"])), constraint
            state.scale.observe(row["score"])
            return float(row["score"]), constraint
        if status == "rejected":
            shortfall = thr - acc
            grade = shortfall / max(abs(thr), 1e-12)
        elif status == "skipped":
            shortfall = None
            grade = _SKIPPED_GRADE
        else:
            shortfall = None
            grade = _FAILED_GRADE
        if shortfall is None and thr is not None:
            shortfall = max(abs(thr), 1e-12) * (1.0 + grade)
        penalty = state.scale.penalty(grade) if self._penalize_infeasible else -math.inf
        if self.multi_objective:
            acc_value = float(acc) if acc is not None else -grade
            speed_scale = _PenaltyScale()
            for r in state.seen.values():
                if r.get("status") == "ok" and r.get("speed") is not None:
                    speed_scale.observe(r["speed"])
            return (acc_value, speed_scale.penalty(grade)), shortfall
        return penalty, shortfall

    def _evaluate(self, state: _GroupState, params: dict[str, Any]) -> dict[str, Any]:
        """Evaluate one new configuration (best of ``num_runs_per_param`` runs)."""
        group = state.group
        reason = self._cost_skip(group, params)
        if reason is None and self.speed_precheck:
            reason = self._precheck_skip(group, params)
        if reason is not None:
            return {"status": "skipped", "score": -math.inf, "accuracy": None, "speed": None,
                    "seeds": {}, "error": reason, "eval_time_s": 0.0}
        best: dict[str, Any] | None = None
        eval_time = 0.0
        for _ in range(self.num_runs_per_param):
            run = self._single_run(group, params)
            eval_time += run.pop("eval_time_s")
            if run["status"] == "failed":
                # A crash ends the repeats; an earlier successful run still counts.
                if best is None:
                    best = run
                else:
                    best["error"] = f"a repeat failed: {run['error']}"
                break
            if best is None or self._run_rank(run) > self._run_rank(best):
                best = run
        assert best is not None
        best["eval_time_s"] = eval_time
        return best

    @staticmethod
    def _run_rank(run: dict[str, Any]) -> tuple[float, float]:
        if run["status"] == "ok":
            return (1.0, run["score"])
        acc = run.get("accuracy")
        return (0.0, -math.inf if acc is None else acc)

    def _draw_seeds(self, group: _Group, params: dict[str, Any]) -> dict[str, int]:
        if "seed" in params:
            return {name: int(params["seed"]) for name in group.layers}
        return {name: self._rng.randrange(1, _SEED_MAX) for name in group.layers}

    def _build_group(self, group: _Group, params: dict[str, Any],
                     seeds: dict[str, int | None]) -> tuple[dict[str, nn.Module], dict[str, int | None]]:
        built: dict[str, nn.Module] = {}
        actual: dict[str, int | None] = {}
        for name in group.layers:
            original = get_submodule(self.model, name)
            layer_type = group.layer_types[name]
            build_params = dict(params)
            if seeds.get(name) is not None:
                build_params["seed"] = seeds[name]
            module = build_layer(layer_type, original, build_params, group.copy_weights)
            built[name] = module
            recorded = layer_type.sketch_seed(module)
            actual[name] = recorded if recorded is not None else seeds.get(name)
        return built, actual

    def _swap_in(self, built: dict[str, nn.Module]) -> dict[str, nn.Module]:
        originals = {name: get_submodule(self.model, name) for name in built}
        try:
            for name, module in built.items():
                set_submodule(self.model, name, module)
        except BaseException:
            self._swap_back(originals)
            raise
        return originals

    def _swap_back(self, originals: dict[str, nn.Module]) -> None:
        for name, module in originals.items():
            set_submodule(self.model, name, module)
        self._restore_modes()

    def _single_run(self, group: _Group, params: dict[str, Any]) -> dict[str, Any]:
        seeds = self._draw_seeds(group, params)
        row: dict[str, Any] = {"accuracy": None, "speed": None, "seeds": seeds, "error": ""}
        try:
            built, row["seeds"] = self._build_group(group, params, seeds)
        except Exception as exc:
            row.update(status="failed", score=-math.inf, eval_time_s=0.0,
                       error=f"building the sketched layer failed: {type(exc).__name__}: {exc}")
            return row
        t0 = time.perf_counter()
        originals = self._swap_in(built)
        try:
            acc = self._eval_accuracy()
            row["accuracy"] = acc
            if self._threshold is not None and acc < self._threshold:
                row.update(status="rejected", score=-math.inf)
            elif self.optimization_eval_func is not None:
                speed = self._eval_speed()
                row.update(status="ok", speed=speed, score=speed)
            else:
                row.update(status="ok", score=acc)
        except Exception as exc:  # a user function's error fails this trial only
            row.update(status="failed", score=-math.inf, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._swap_back(originals)
        row["eval_time_s"] = time.perf_counter() - t0
        return row

    def _group_macs(self, group: _Group, params: dict[str, Any]) -> tuple[int, int]:
        """(dense, sketched) MACs of the group's layers by their layer types' cost models.

        Raises ``NotImplementedError`` when a layer type has no cost model and
        ``ValueError`` (naming the layer) when ``params`` do not fit one.
        """
        tunable = {k: v for k, v in params.items() if k != "seed"}
        dense = sketched = 0
        for name in group.layers:
            module = get_submodule(self.model, name)
            layer_type = group.layer_types[name]
            try:
                dense += layer_type.cost(module).macs
                sketched += layer_type.cost(module, tunable).macs
            except (ValueError, TypeError) as exc:
                raise ValueError(f"invalid for layer {name!r}: {exc}") from exc
        return dense, sketched

    def _cost_skip(self, group: _Group, params: dict[str, Any]) -> str | None:
        if not self.skip_costlier:
            return None
        try:
            dense, sketched = self._group_macs(group, params)
        except NotImplementedError:
            return None
        except ValueError as exc:
            return str(exc)
        if sketched >= dense:
            return f"cost model: {sketched} MACs >= {dense} MACs of the original (no saving)"
        return None

    def _precheck_skip(self, group: _Group, params: dict[str, Any]) -> str | None:
        """Time the sketched layer(s) alone against the dense one(s) on captured inputs.

        Both are timed now, in alternating rounds, so a machine that is busy for a
        while slows both alike instead of only the candidate.
        """
        if any(name not in self._captured_inputs for name in group.layers):
            return None  # the layer never ran during the baseline evaluation
        try:
            built, _ = self._build_group(group, params, self._draw_seeds(group, params))
        except Exception:
            return None  # let the real trial record the build error
        dense_total = sketched_total = 0.0
        try:
            for name in group.layers:
                args, kwargs = self._captured_inputs[name]
                dense, sketched = _time_pair(get_submodule(self.model, name), built[name], args, kwargs)
                dense_total += dense
                sketched_total += sketched
        except Exception:
            return None  # the layer cannot run alone on the captured inputs: no verdict
        if sketched_total >= dense_total:
            return (f"speed pre-check: sketched layer(s) take {sketched_total * 1e3:.3f} ms vs "
                    f"{dense_total * 1e3:.3f} ms dense (not faster)")
        return None

    # ------------------------------------------------------------------ internals: finishing
    def _options(self, group: _Group) -> list[_Option]:
        rows = [r for r in self._results.trials
                if r["layer_name"] == group.key and r["status"] == "ok"]
        options = []
        for r in rows:
            speed = r.get("speed_median") if r.get("speed_median") is not None else r.get("speed")
            options.append(_Option(params=dict(r["params"]), seeds=dict(r.get("seeds") or {}),
                                   accuracy=r.get("accuracy"), speed=speed,
                                   score=speed if (speed is not None and not self.multi_objective
                                                   and self.optimization_eval_func is not None)
                                   else r["score"],
                                   trial_number=r["trial_number"]))
        return options

    def _remeasure(self, group: _Group) -> None:
        if (self.optimization_eval_func is None or not self.remeasure_top
                or not self.remeasure_runs or self.multi_objective):
            return
        rows = [r for r in self._results.trials if r["layer_name"] == group.key and r["status"] == "ok"
                and r.get("speed") is not None]
        rows.sort(key=lambda r: r["score"], reverse=True)
        top = rows[: self.remeasure_top]
        if len(top) < 2:
            return
        for r in top:
            if not self._time_left():
                return
            samples = [r["speed"]]
            try:
                built, _ = self._build_group(group, r["params"], dict(r.get("seeds") or {}))
            except Exception:
                continue
            originals = self._swap_in(built)
            try:
                for _ in range(self.remeasure_runs):
                    samples.append(self._eval_speed())
            except Exception as exc:
                self._log(f"[{group.key}] re-measuring trial {r['trial_number']} failed: {exc}")
            finally:
                self._swap_back(originals)
            r["speed_median"] = float(statistics.median(samples))

    def _finish_group(self, state: _GroupState, remeasure: bool = True) -> None:
        group = state.group
        if remeasure:
            self._remeasure(group)
        options = self._options(group)
        best = self._group_winner(group, options)
        summary = {
            "layers": list(group.layers),
            "layer_types": {n: group.layer_types[n].name for n in group.layers},
            "module_classes": {n: type(get_submodule(self.model, n)).__name__ for n in group.layers},
            "param_names": list(group.space),
            "space": {k: repr(v) for k, v in group.space.items()},
            "copy_weights": group.copy_weights,
            "n_trials": state.count,
            "n_evaluated": state.evaluated,
            "best_params": None if best is None else dict(best.params),
            "best_score": None if best is None else best.score,
            "best_seeds": None if best is None else dict(best.seeds),
            "best_trial": None if best is None else best.trial_number,
            "best_accuracy": None if best is None else best.accuracy,
            "best_speed": None if best is None else best.speed,
        }
        self._results.groups[group.key] = summary
        if best is None:
            self._log(f"[{group.key}] no feasible configuration")
        else:
            self._log(f"[{group.key}] best {best.params} score={best.score:.4g}")
        plugins.emit("panther_layer_finished", layer_name=group.key,
                     best_params=summary["best_params"], best_score=summary["best_score"])

    def _group_winner(self, group: _Group, options: list[_Option]) -> _Option | None:
        """The group's winner; once its top candidates were re-measured, only they compete.

        A row measured once would otherwise win on a lucky first sample that the re-measured
        rows gave up when their median was taken.
        """
        remeasured = {r["trial_number"] for r in self._results.trials
                      if r["layer_name"] == group.key and r.get("speed_median") is not None}
        return self._pick_winner([o for o in options if o.trial_number in remeasured] or options)

    def _pick_winner(self, options: list[_Option]) -> _Option | None:
        if not options:
            return None
        if self.multi_objective and self._threshold is None:
            # No constraint: the Pareto point closest to the ideal after min-max scaling.
            accs = [o.accuracy for o in options]
            spds = [o.speed for o in options]
            a_lo, a_hi, s_lo, s_hi = min(accs), max(accs), min(spds), max(spds)

            def distance(o: _Option) -> float:
                a = 0.0 if a_hi == a_lo else (a_hi - o.accuracy) / (a_hi - a_lo)
                s = 0.0 if s_hi == s_lo else (s_hi - o.speed) / (s_hi - s_lo)
                return math.hypot(a, s)

            return min(options, key=distance)
        # Ties (equal scores) go to the earliest trial, which keeps runs reproducible.
        return max(options, key=lambda o: (o.score, -o.trial_number))

    def _summarize_unfinished(self) -> None:
        """After Ctrl-C: summarise the group that was being tuned, without new evaluations."""
        state = self._current
        if state is None or state.group.key in self._results.groups:
            return
        try:
            self._finish_group(state, remeasure=False)
        except Exception as exc:  # the interrupt matters more; its trials are kept regardless
            warnings.warn(f"could not summarise group {state.group.key!r} after the interrupt: "
                          f"{type(exc).__name__}: {exc}", TuningWarning, stacklevel=3)

    def _winner_selection(self) -> dict[str, LayerChoice]:
        selection: dict[str, LayerChoice] = {}
        for group in self.groups:
            summary = self._results.groups.get(group.key)
            if not summary or summary.get("best_params") is None:
                continue
            selection.update(self._choices(group, summary["best_params"], summary["best_seeds"] or {}))
        return selection

    def _choices(self, group: _Group, params: dict[str, Any],
                 seeds: dict[str, int | None]) -> dict[str, LayerChoice]:
        return {
            name: LayerChoice(
                layer_name=name, layer_type=group.layer_types[name].name,
                module_class=type(get_submodule(self.model, name)).__name__,
                params={k: v for k, v in params.items() if k != "seed"},
                seed=seeds.get(name), copy_weights=group.copy_weights)
            for name in group.layers
        }

    def _finalize(self) -> None:
        info = self._results.info
        finished = [g for g in self.groups if g.key in self._results.groups]
        per_group = {g.key: self._options(g) for g in finished}
        winners = {g.key: self._group_winner(g, per_group[g.key]) for g in finished}
        info["stopped_by"] = self._stop_reason
        if not self.verify:
            self._results.selection = self._winner_selection()
            info["verified"] = False
            return
        if any(w is not None for w in winners.values()):
            self._warm_baseline_speed()
        base_speed = self._baseline["speed"]
        if base_speed is not None and not self.multi_objective:
            # A group whose best configuration is not faster than the original model gains
            # nothing from being sketched: it stays original in the combination.
            for key, w in list(winners.items()):
                if w is not None and w.speed is not None and w.speed <= base_speed:
                    info.setdefault("kept_original", []).append(key)
                    winners[key] = None
        thr = self._threshold
        tried: list[dict[str, Any]] = []
        info["verification"] = tried

        def combo_of(choice: dict[str, _Option | None]) -> dict[str, LayerChoice]:
            sel: dict[str, LayerChoice] = {}
            for g in finished:
                opt = choice.get(g.key)
                if opt is not None:
                    sel.update(self._choices(g, opt.params, opt.seeds))
            return sel

        def signature(choice: dict[str, _Option | None]) -> tuple[Any, ...]:
            return tuple((k, None if o is None else o.trial_number) for k, o in sorted(choice.items()))

        def verify(choice: dict[str, _Option | None], label: str) -> tuple[bool, float | None, float | None]:
            sel = combo_of(choice)
            acc, speed, error = self._evaluate_selection(sel)
            passed = error is None and (thr is None or (acc is not None and acc >= thr))
            tried.append({"step": label, "layers": sorted(sel), "accuracy": acc, "speed": speed,
                          "passed": passed, "error": error,
                          "choice": {k: (None if o is None else o.trial_number) for k, o in choice.items()}})
            self._log(f"verify [{label}]: {len(sel)} sketched layer(s), accuracy="
                      f"{'n/a' if acc is None else f'{acc:.4f}'} -> {'ok' if passed else 'below threshold'}")
            return passed, acc, speed

        chosen: dict[str, _Option | None] | None = None
        final_acc = final_speed = None
        if not any(w is not None for w in winners.values()):
            chosen = {}
        else:
            ok, final_acc, final_speed = verify(winners, "per-group winners")
            if ok:
                chosen = winners
            elif thr is not None:
                chosen, final_acc, final_speed = self._backoff(finished, per_group, winners, verify, signature)
            else:
                chosen = {}
        if not chosen or all(o is None for o in chosen.values()):
            if any(w is not None for w in winners.values()) and thr is not None:
                why = f"no combination of tuned layers met the accuracy threshold {thr:.4g}"
            elif info.get("kept_original"):
                why = "no feasible configuration was faster than the original model"
            elif thr is not None:
                why = f"no configuration met the accuracy threshold {thr:.4g}"
            else:
                why = "no configuration was evaluated successfully"
            warnings.warn(f"{why}; apply_best_params() returns the original model",
                          TuningWarning, stacklevel=3)
            chosen = {}
            final_acc = self._baseline["accuracy"]
            final_speed = self._baseline["speed"]
        self._results.selection = combo_of(chosen)
        info["verified"] = True
        base_speed, final_speed = self._final_speeds(final_speed)
        info["baseline_speed"] = base_speed
        info["final_accuracy"] = final_acc
        info["final_speed"] = final_speed
        info["speedup"] = (final_speed / base_speed) if (final_speed and base_speed) else None
        info["sketched_layers"] = sorted(self._results.selection)
        self._log(f"final: accuracy={final_acc}, speed={final_speed}, speedup={info['speedup']}, "
                  f"{len(self._results.selection)} sketched layer(s)")

    def _backoff(self, finished: list[_Group], per_group: dict[str, list[_Option]],
                 winners: dict[str, _Option | None], verify: Callable[..., Any],
                 signature: Callable[..., Any]) -> tuple[dict[str, _Option | None] | None, Any, Any]:
        """Knapsack allocation under a shrinking accuracy budget until the combination passes."""
        base_acc = self._baseline["accuracy"]
        base_speed = self._baseline["speed"]
        thr = self._threshold
        for g in finished:
            for o in per_group[g.key]:
                o.drop = max(0.0, base_acc - (o.accuracy if o.accuracy is not None else base_acc))
                o.gain = self._gain(g, o, base_speed)
        seen = {signature(winners)}
        budget = max(base_acc - thr, 0.0)
        for step in range(self.max_backoff_steps):
            choice = _knapsack(finished, per_group, budget)
            sig = signature(choice)
            if all(o is None for o in choice.values()):
                break
            if sig not in seen:
                seen.add(sig)
                ok, acc, speed = verify(choice, f"knapsack budget={budget:.4g}")
                if ok:
                    return choice, acc, speed
            budget *= 0.5
            if budget <= 1e-12 and step > 0:
                budget = 0.0
        # Last resort: the single best group option, already measured alone above threshold.
        singles = sorted(
            ((o.gain, g.key, o) for g in finished for o in per_group[g.key] if o.gain > 0),
            key=lambda t: t[0], reverse=True)
        for _, key, o in singles[:3]:
            choice = {g.key: (o if g.key == key else None) for g in finished}
            if signature(choice) in seen:
                continue
            seen.add(signature(choice))
            ok, acc, speed = verify(choice, f"single group {key}")
            if ok:
                return choice, acc, speed
        return None, None, None

    def _gain(self, group: _Group, option: _Option, base_speed: float | None) -> float:
        if base_speed and option.speed:
            return 1.0 / base_speed - 1.0 / option.speed  # time per unit of work saved
        try:
            dense, sketched = self._group_macs(group, option.params)
        except Exception:
            return 1.0  # no cost model: every option is worth the same
        return float(dense - sketched)

    def _evaluate_selection(self, selection: dict[str, LayerChoice], accuracy: bool = True,
                            fidelity: float = 1.0, speed: bool = True,
                            ) -> tuple[float | None, float | None, str | None]:
        """Evaluate the model with ``selection`` swapped in; the model is always restored.

        Returns ``(accuracy, speed, error)``; speed is measured only when the accuracy
        meets the threshold (or ``accuracy=False``, which measures speed alone), and never
        at a ``fidelity`` below 1 (a screen on part of the validation data) or with
        ``speed=False``.
        """
        built: dict[str, nn.Module] = {}
        try:
            for name, choice in selection.items():
                built[name] = build_layer(plugins.get_layer_type(choice.layer_type),
                                          get_submodule(self.model, name), choice.build_params(),
                                          choice.copy_weights)
        except Exception as exc:
            return None, None, f"building failed: {type(exc).__name__}: {exc}"
        originals = self._swap_in(built)
        try:
            acc = self._eval_accuracy(fidelity) if accuracy else None
            measured = None
            if speed and fidelity >= 1.0 and self.optimization_eval_func is not None and (
                    acc is None or self._threshold is None or acc >= self._threshold):
                measured = self._eval_speed()
            return acc, measured, None
        except Exception as exc:
            return None, None, f"{type(exc).__name__}: {exc}"
        finally:
            self._swap_back(originals)

    def _warm_baseline_speed(self) -> None:
        """Re-measure the original model's speed now that the process is warm.

        The first measurement ran before any trial and pays for one-off start-up costs
        (allocations, lazy initialisation), which would flatter every sketch.
        """
        self._base_samples = []
        if self.optimization_eval_func is None or self._baseline["speed"] is None:
            return
        try:
            for _ in range(max(1, self.remeasure_runs)):
                try:
                    self._base_samples.append(self._eval_speed())
                finally:
                    self._restore_modes()
        except Exception as exc:
            self._log(f"re-measuring the original model's speed failed: {exc}")
        if self._base_samples:
            self._baseline["speed"] = float(statistics.median(self._base_samples))

    def _final_speeds(self, final_speed: float | None) -> tuple[float | None, float | None]:
        """Median speeds of the original and the tuned model, measured alternately.

        The baseline taken before tuning ran on a cold process (first calls pay for
        allocations and lazy initialisation), so the report re-measures both back to back.
        """
        base = self._baseline["speed"]
        if (self.optimization_eval_func is None or not self.remeasure_runs or base is None
                or final_speed is None or not self._results.selection):
            return base, final_speed
        base_samples, final_samples = list(self._base_samples or [base]), [final_speed]
        try:
            for _ in range(self.remeasure_runs):
                try:
                    base_samples.append(self._eval_speed())
                finally:
                    self._restore_modes()
                _, speed, error = self._evaluate_selection(self._results.selection, accuracy=False)
                if error is None and speed is not None:
                    final_samples.append(speed)
        except Exception as exc:
            self._log(f"re-measuring the final speeds failed: {exc}")
        return float(statistics.median(base_samples)), float(statistics.median(final_samples))


@dataclass
class _GroupState:
    """One group's search in progress.

    ``count`` numbers every proposal (trial rows); ``evaluated`` counts those that
    ran the evaluation functions, the ones the budget is about (skipped and cached
    proposals are free).
    """

    group: _Group
    search: Any
    count: int = 0
    evaluated: int = 0
    seen: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    scale: _PenaltyScale = field(default_factory=_PenaltyScale)


def _knapsack(groups: list[_Group], options: dict[str, list[_Option]], budget: float,
              resolution: int = 400) -> dict[str, _Option | None]:
    """Multiple-choice knapsack: at most one option per group, total drop <= budget, max gain.

    Accuracy drops are assumed additive (each was measured with the other groups
    original), which is why the result is verified afterwards.
    """
    import numpy as np

    neg = -np.inf
    best = np.full(resolution + 1, neg)
    best[0] = 0.0
    picks: list[tuple[str, np.ndarray, list[tuple[int, _Option]]]] = []
    for g in groups:
        items = []
        for o in options[g.key]:
            if o.gain <= 0:
                continue
            if o.drop <= 0:
                weight = 0
            elif budget <= 0:
                continue
            else:
                weight = math.ceil(o.drop / budget * resolution - 1e-9)
                if weight > resolution:
                    continue
            items.append((weight, o))
        new = best.copy()
        choice = np.full(resolution + 1, -1, dtype=np.int64)
        for i, (w, o) in enumerate(items):
            cand = np.full(resolution + 1, neg)
            cand[w:] = best[: resolution + 1 - w] + o.gain
            better = cand > new
            new[better] = cand[better]
            choice[better] = i
        picks.append((g.key, choice, items))
        best = new
    b = int(np.argmax(best))
    out: dict[str, _Option | None] = {}
    for key, choice, items in reversed(picks):
        i = int(choice[b])
        if i >= 0:
            w, o = items[i]
            out[key] = o
            b -= w
        else:
            out[key] = None
    return out


def _time_pair(dense: nn.Module, sketched: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
               rounds: int = 6, iters: int = 3, timer: Callable[[], float] | None = None,
               ) -> tuple[float, float]:
    """Seconds per call of ``dense`` and of ``sketched`` on the same inputs, timed together.

    The two alternate, round by round, and swap which goes first each round (so
    neither always runs on a cache the other warmed). Each gets the *minimum* over
    its rounds: load from other processes only ever adds time, so the fastest round
    is the closest to the modules' own cost. ``timer`` defaults to ``_clock``.
    """
    clock = timer or _clock
    device, _ = module_device_dtype(dense)
    best = {"dense": math.inf, "sketched": math.inf}
    modules = {"dense": dense, "sketched": sketched}
    with torch.inference_mode():
        for module in modules.values():  # warm-up: first calls pay for lazy initialisation
            module(*args, **kwargs)
        _sync(device)
        for r in range(rounds):
            for label in ("dense", "sketched") if r % 2 == 0 else ("sketched", "dense"):
                t0 = clock()
                for _ in range(iters):
                    modules[label](*args, **kwargs)
                _sync(device)
                best[label] = min(best[label], (clock() - t0) / iters)
    return best["dense"], best["sketched"]


# The speed pre-check's clock (tests substitute a fake one).
_clock: Callable[[], float] = time.perf_counter


def _decode_float(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value
