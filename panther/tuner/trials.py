"""One trial: its record, building the sketched layers, swapping them in, evaluating.

This is the only module that swaps modules in and out of the user's model
(:func:`swapped`); every swap is undone on the way out, on errors and Ctrl-C too,
and every submodule's train/eval flag is restored.

:class:`TrialRecord` is a trial's result. It has one encoding per destination:
:meth:`TrialRecord.to_row` (the results manifest and DataFrame rows),
:meth:`TrialRecord.to_stored` (what a persistent backend keeps for a resumed run),
:meth:`TrialRecord.to_event` (what the ``panther_trial_finished`` hook receives), and
the inverse :meth:`TrialRecord.from_row` for manifests and stored trials.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from panther.tuner import plugins
from panther.tuner.results import (
    LayerChoice,
    build_layer,
    get_submodule,
    module_device_dtype,
    set_submodule,
)
from panther.tuner.settings import meets_threshold
from panther.tuner.timing import time_interleaved

if TYPE_CHECKING:
    from panther.tuner.groups import LayerGroup
    from panther.tuner.run import Run

__all__ = [
    "FREE_STATUSES",
    "SEED_MAX",
    "TrialRecord",
    "build_group",
    "draw_seeds",
    "swapped",
    "evaluate_params",
    "evaluate_selection",
    "measure_speeds",
    "group_macs",
    "time_pair",
]

#: Statuses of proposals that did not run the evaluation functions (free for the budget).
FREE_STATUSES = ("skipped", "cached", "predicted")
#: Sketch seeds are drawn from ``[1, SEED_MAX)``.
SEED_MAX = 2**31 - 1

# Keys a stored trial keeps for a resumed run (what the rows held before TrialRecord).
_STORED = ("status", "score", "accuracy", "speed", "seeds", "error", "wall_time_s", "eval_time_s",
           "told", "constraint", "cached_status", "pruned_at", "intermediate")
_EVENT = ("layer_name", "score", "accuracy", "speed", "trial_number", "status", "error", "wall_time_s")
# Written to the manifest only when set (the row dicts never had them otherwise).
_OPTIONAL = ("cached_from", "cached_status", "speed_median", "resumed", "predicted_error",
             "calibration_error", "layer_error", "model_error", "gain_macs", "pruned_at",
             "intermediate")


@dataclass(eq=False)
class TrialRecord:
    """The result of one proposal of one layer group's search.

    ``status`` is ``ok`` (evaluated and feasible), ``rejected`` (below the accuracy
    threshold), ``failed`` (building or evaluating raised, or returned a bad value),
    ``skipped`` (the cost model or speed pre-check said it cannot be faster; not
    evaluated), ``cached`` (a repeat answered from an earlier record), ``predicted``
    (a guided run's candidate, measured on calibration batches only; not evaluated) or
    ``pruned`` (stopped at the low fidelity ``pruned_at``, see
    :mod:`panther.tuner.fidelity`: evaluated, but never accepted nor chosen).
    ``score`` is ``-inf`` unless ``ok``. ``told``/``constraint`` are what the search
    backend learnt; ``seeds`` the sketch seed of every layer of the group.
    """

    status: str
    score: float = -math.inf
    accuracy: float | None = None
    speed: float | None = None
    seeds: dict[str, int | None] = field(default_factory=dict)
    error: str = ""
    eval_time_s: float | None = 0.0
    wall_time_s: float | None = None
    layer_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    trial_number: int = 0
    told: Any = None
    constraint: float | None = None
    cached_from: int | None = None
    cached_status: str | None = None
    speed_median: float | None = None
    resumed: bool = False
    #: The sketch's relative weight error predicted from the singular values (sensitivity).
    predicted_error: float | None = None
    #: Guided runs: the error measured on calibration batches (the one used for ordering),
    #: the layers' and the model's relative output errors, and the multiply-adds saved.
    calibration_error: float | None = None
    layer_error: float | None = None
    model_error: float | None = None
    gain_macs: int | None = None
    #: Multi-fidelity trials: ``[[fidelity, accuracy], ...]`` at each intermediate fidelity,
    #: and the fidelity a pruned trial was stopped at. ``accuracy`` is always full-fidelity.
    intermediate: list[list[float]] | None = None
    pruned_at: float | None = None

    @property
    def evaluated(self) -> bool:
        """Whether the user's functions ran for it (what the evaluation budget counts)."""
        return self.status not in FREE_STATUSES

    @property
    def evaluation_cost(self) -> float:
        """The evaluation's cost in full accuracy evaluations (0 when not evaluated).

        A pruned trial costs the fidelities it ran; a completed one, 1 plus its screens.
        """
        if not self.evaluated:
            return 0.0
        screens = sum(f for f, _ in self.intermediate or ())
        return screens if self.status == "pruned" else 1.0 + screens

    @property
    def effective_speed(self) -> float | None:
        """The re-measured median speed when there is one, else the speed."""
        return self.speed_median if self.speed_median is not None else self.speed

    def rank(self) -> tuple[float, float]:
        """Order of repeats of one configuration: feasible by score, then by accuracy."""
        if self.status == "ok":
            return (1.0, self.score)
        return (0.0, -math.inf if self.accuracy is None else self.accuracy)

    # ---- encodings ------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        """The manifest/DataFrame row (the dict layout results files have always had)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL}
        row["params"] = dict(self.params)
        row["seeds"] = dict(self.seeds)
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None and value is not False:
                row[name] = value
        return row

    def to_stored(self) -> dict[str, Any]:
        """What a persistent backend stores so a resumed run can rebuild this record.

        Non-finite floats become strings and long errors are cut: storages want JSON
        and bound attribute sizes.
        """
        out = {}
        for key in _STORED:
            v = getattr(self, key)
            if isinstance(v, float) and not math.isfinite(v):
                v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            elif isinstance(v, str) and len(v) > 2000:
                v = v[:2000] + "..."  # the start says what failed
            elif isinstance(v, dict):
                v = dict(v)
            out[key] = v
        return out

    def to_event(self) -> dict[str, Any]:
        """The flat dict the ``panther_trial_finished`` hook receives (params as columns)."""
        out = {k: getattr(self, k) for k in _EVENT}
        out.update(self.params)
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrialRecord:
        """Inverse of :meth:`to_row` and :meth:`to_stored` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        data = {k: _decode_float(v) if k in ("score", "accuracy", "speed", "told") else v
                for k, v in row.items() if k in known}
        data.setdefault("status", "ok")
        if data.get("score") is None:
            data["score"] = -math.inf
        data["seeds"] = dict(data.get("seeds") or {})
        data["params"] = dict(data.get("params") or {})
        data["error"] = data.get("error") or ""
        return cls(**data)


def _decode_float(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value


class BadValue(ValueError):
    """A user evaluation function returned None, NaN or something that is not a number."""


def finite_float(value: Any, what: str) -> float:
    """``value`` as a finite float, or :class:`BadValue` naming ``what`` returned it."""
    if value is None:
        raise BadValue(f"{what} returned None")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise BadValue(f"{what} returned a tensor of shape {tuple(value.shape)}, not a scalar")
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise BadValue(f"{what} returned {value!r}, which is not a number") from exc
    if not math.isfinite(out):
        raise BadValue(f"{what} returned {out}")
    return out


# ---- building and swapping -------------------------------------------------------------------
def draw_seeds(run: Run, group: LayerGroup, params: dict[str, Any]) -> dict[str, int]:
    """One sketch seed per layer of ``group``: ``params["seed"]`` when searched, else fresh draws."""
    if "seed" in params:
        return {name: int(params["seed"]) for name in group.layers}
    return {name: run.rng.randrange(1, SEED_MAX) for name in group.layers}


def build_group(run: Run, group: LayerGroup, params: dict[str, Any],
                seeds: dict[str, int | None]) -> tuple[dict[str, nn.Module], dict[str, int | None]]:
    """Build the sketched layers of ``group`` (not swapped in) and the seeds they really use."""
    built: dict[str, nn.Module] = {}
    actual: dict[str, int | None] = {}
    for name in group.layers:
        original = run.modules[name]
        layer_type = group.layer_types[name]
        build_params = dict(params)
        if seeds.get(name) is not None:
            build_params["seed"] = seeds[name]
        module = build_layer(layer_type, original, build_params, group.copy_weights)
        built[name] = module
        recorded = layer_type.sketch_seed(module)
        actual[name] = recorded if recorded is not None else seeds.get(name)
    return built, actual


def build_selection(run: Run, selection: dict[str, LayerChoice]) -> dict[str, nn.Module]:
    """Build every layer of ``selection`` from its recorded type, params and seed (not swapped in)."""
    return {name: build_layer(plugins.get_layer_type(choice.layer_type), run.modules[name],
                              choice.build_params(), choice.copy_weights)
            for name, choice in selection.items()}


@contextmanager
def swapped(run: Run, built: dict[str, nn.Module]) -> Iterator[None]:
    """Put ``built`` into the model for the block; the originals and modes always come back."""
    model = run.model
    originals = {name: run.modules[name] for name in built}
    try:
        for name, module in built.items():
            set_submodule(model, name, module)
        yield
    finally:
        for name, module in originals.items():
            set_submodule(model, name, module)
        run.restore_modes()


# ---- evaluating ------------------------------------------------------------------------------
#: ``prune(fidelity, accuracy)``: why to stop a trial after its screen at ``fidelity``
#: (``None``: go on). The search loop builds it from the backend's pruner.
PruneCheck = Callable[[float, float], "str | None"]


def evaluate_params(run: Run, group: LayerGroup, params: dict[str, Any],
                    ladder: tuple[float, ...] = (), prune: PruneCheck | None = None) -> TrialRecord:
    """Evaluate one new configuration of ``group`` (best of ``num_runs_per_param`` runs).

    Configurations the cost model (or the speed pre-check) says cannot be faster are
    skipped without running the user's functions. With a ``ladder`` of fidelities and a
    ``prune`` check, the first run evaluates the accuracy at each fidelity of the ladder
    first and stops (status ``pruned``) as soon as ``prune`` says why; a trial that
    survives is evaluated at full fidelity like any other, and only that decides.
    """
    reason = cost_skip(run, group, params)
    if reason is None and run.settings.speed_precheck:
        reason = precheck_skip(run, group, params)
    if reason is not None:
        return TrialRecord(status="skipped", error=reason)
    best: TrialRecord | None = None
    eval_time = 0.0
    for i in range(run.settings.num_runs_per_param):
        # Only the first run screens: its survival is what the pruner decided on.
        record = _single_run(run, group, params, ladder if i == 0 and prune is not None else (), prune)
        eval_time += record.eval_time_s or 0.0
        if record.status == "pruned":
            best = record
            break
        if record.status == "failed":
            # A crash ends the repeats; an earlier successful run still counts.
            if best is None:
                best = record
            else:
                best.error = f"a repeat failed: {record.error}"
            break
        if best is None or record.rank() > best.rank():
            best = record
    assert best is not None
    best.eval_time_s = eval_time
    return best


def _single_run(run: Run, group: LayerGroup, params: dict[str, Any],
                ladder: tuple[float, ...] = (), prune: PruneCheck | None = None) -> TrialRecord:
    seeds = draw_seeds(run, group, params)
    record = TrialRecord(status="failed", seeds=dict(seeds))
    try:
        built, record.seeds = build_group(run, group, params, seeds)
    except Exception as exc:
        record.error = f"building the sketched layer failed: {type(exc).__name__}: {exc}"
        return record
    t0 = time.perf_counter()
    with swapped(run, built):
        try:
            # A trial pruned at a low fidelity gets no full evaluation: never accepted.
            if _screens_pass(run, record, ladder, prune):
                acc = record.accuracy = run.eval_accuracy()
                if not meets_threshold(acc, run.threshold):
                    record.status = "rejected"
                elif run.settings.optimization_eval_func is not None:
                    speed = run.eval_speed()
                    record.status, record.speed, record.score = "ok", speed, speed
                else:
                    record.status, record.score = "ok", acc
        except Exception as exc:  # a user function's error fails this trial only
            record.status, record.score = "failed", -math.inf
            record.error = f"{type(exc).__name__}: {exc}"
    record.eval_time_s = time.perf_counter() - t0
    return record


def _screens_pass(run: Run, record: TrialRecord, ladder: tuple[float, ...],
                  prune: PruneCheck | None) -> bool:
    """Evaluate the swapped-in model at each fidelity of ``ladder``; ``False`` once pruned."""
    for fidelity in ladder:
        screened = run.eval_accuracy(fidelity)
        record.intermediate = [*(record.intermediate or []), [fidelity, screened]]
        why = prune(fidelity, screened) if prune is not None else None
        if why is not None:
            record.status, record.pruned_at, record.error = "pruned", fidelity, why
            return False
    return True


def evaluate_selection(run: Run, selection: dict[str, LayerChoice], accuracy: bool = True,
                       ) -> tuple[float | None, float | None, str | None]:
    """Evaluate the model with ``selection`` swapped in; the model is always restored.

    Returns ``(accuracy, speed, error)``; speed is measured only when the accuracy
    meets the threshold (or ``accuracy=False``, which measures speed alone).
    """
    try:
        built = build_selection(run, selection)
    except Exception as exc:
        return None, None, f"building failed: {type(exc).__name__}: {exc}"
    with swapped(run, built):
        try:
            acc = run.eval_accuracy() if accuracy else None
            speed = None
            if run.settings.optimization_eval_func is not None and (
                    acc is None or meets_threshold(acc, run.threshold)):
                speed = run.eval_speed()
            return acc, speed, None
        except Exception as exc:
            return None, None, f"{type(exc).__name__}: {exc}"


def measure_speeds(run: Run, group: LayerGroup, params: dict[str, Any],
                   seeds: dict[str, int | None], times: int) -> list[float]:
    """Speed of ``group`` rebuilt with ``params``/``seeds``, measured ``times`` times.

    Raises when the build fails; a failing measurement ends the list early (logged).
    """
    built, _ = build_group(run, group, params, seeds)
    samples: list[float] = []
    with swapped(run, built):
        try:
            for _ in range(times):
                samples.append(run.eval_speed())
        except Exception as exc:
            run.log(f"[{group.key}] re-measuring {params} failed: {exc}")
    return samples


# ---- skipping without evaluating -------------------------------------------------------------
def group_macs(run: Run, group: LayerGroup, params: dict[str, Any]) -> tuple[int, int]:
    """(dense, sketched) MACs of the group's layers by their layer types' cost models.

    Raises ``NotImplementedError`` when a layer type has no cost model and
    ``ValueError`` (naming the layer) when ``params`` do not fit one.
    """
    tunable = {k: v for k, v in params.items() if k != "seed"}
    dense = sketched = 0
    for name in group.layers:
        module = run.modules[name]
        layer_type = group.layer_types[name]
        try:
            dense += run.dense_macs(name, layer_type)
            sketched += layer_type.cost(module, tunable).macs
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid for layer {name!r}: {exc}") from exc
    return dense, sketched


def cost_skip(run: Run, group: LayerGroup, params: dict[str, Any]) -> str | None:
    """Why ``params`` need not be evaluated by the cost model (``None``: evaluate them)."""
    if not run.settings.skip_costlier:
        return None
    try:
        dense, sketched = group_macs(run, group, params)
    except NotImplementedError:
        return None
    except ValueError as exc:
        return str(exc)
    if sketched >= dense:
        return f"cost model: {sketched} MACs >= {dense} MACs of the original (no saving)"
    return None


def precheck_skip(run: Run, group: LayerGroup, params: dict[str, Any]) -> str | None:
    """Time the sketched layer(s) alone against the dense one(s) on captured inputs.

    Both are timed now, in alternating rounds, so a machine that is busy for a
    while slows both alike instead of only the candidate.
    """
    if any(name not in run.captured_inputs for name in group.layers):
        return None  # the layer never ran during the baseline evaluation
    try:
        built, _ = build_group(run, group, params, draw_seeds(run, group, params))
    except Exception:
        return None  # let the real trial record the build error
    dense_total = sketched_total = 0.0
    try:
        for name in group.layers:
            args, kwargs = run.captured_inputs[name]
            dense, sketched = time_pair(get_submodule(run.model, name), built[name], args, kwargs)
            dense_total += dense
            sketched_total += sketched
    except Exception:
        return None  # the layer cannot run alone on the captured inputs: no verdict
    if sketched_total >= dense_total:
        return (f"speed pre-check: sketched layer(s) take {sketched_total * 1e3:.3f} ms vs "
                f"{dense_total * 1e3:.3f} ms dense (not faster)")
    return None


def time_pair(dense: nn.Module, sketched: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              rounds: int = 6, iters: int = 3, timer: Callable[[], float] | None = None,
              ) -> tuple[float, float]:
    """Seconds per call of ``dense`` and of ``sketched`` on the same inputs, timed together.

    The two alternate, round by round, and swap which goes first each round (so
    neither always runs on a cache the other warmed). Each gets the *minimum* over
    its rounds: load from other processes only ever adds time, so the fastest round
    is the closest to the modules' own cost. ``timer`` defaults to ``_clock``.
    """
    device, _ = module_device_dtype(dense)
    with torch.inference_mode():
        times = time_interleaved(
            {"dense": lambda: dense(*args, **kwargs), "sketched": lambda: sketched(*args, **kwargs)},
            warmup=1, iters=iters, rounds=rounds, device=device, clock=timer or _clock, alternate=True)
    return min(times["dense"]), min(times["sketched"])


# The speed pre-check's clock (tests substitute a fake one).
_clock: Callable[[], float] = time.perf_counter
