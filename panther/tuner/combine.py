"""After the searches: each group's winner, and the verified combination of all groups.

:class:`Combiner` turns a run's trial records into the final selection:

1. per group, the top candidates' speeds are re-measured and the winner picked
   (:meth:`Combiner.finish_group`);
2. groups not faster than the original stay original; the winners together are
   evaluated on the whole model (:meth:`Combiner.finalize`);
3. if they miss the accuracy threshold, :func:`knapsack` re-allocates the per-group
   options under a shrinking accuracy budget, each allocation verified, and as a
   last resort the best single groups are tried.

Also here: :func:`pareto_front_mask`, the one Pareto-front computation (the
tuner's :meth:`pareto_front` and the visualizer use it).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from panther.tuner import plugins
from panther.tuner.groups import LayerGroup
from panther.tuner.results import LayerChoice
from panther.tuner.run import Run
from panther.tuner.search_loop import GroupSearch, TuningWarning
from panther.tuner.settings import meets_threshold
from panther.tuner.trials import evaluate_selection, group_macs, measure_speeds

__all__ = ["Option", "Combiner", "knapsack", "pareto_front_mask", "record_group"]


@dataclass
class Option:
    """One candidate configuration of a group for the final combination."""

    params: dict[str, Any]
    seeds: dict[str, int | None]
    accuracy: float | None
    speed: float | None
    score: float
    trial_number: int
    gain: float = 0.0
    drop: float = 0.0


Choice = dict[str, Option | None]


class Combiner:
    """Chooses each group's winner and the verified combination of a :class:`Run`."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.settings = run.settings
        self.tried: list[dict[str, Any]] = []
        self.finished: list[LayerGroup] = []

    # ---- per group ---------------------------------------------------------------------------
    def options(self, group: LayerGroup) -> list[Option]:
        """The group's feasible (``ok``) trials as options, scored by their (median) speed."""
        by_speed = not self.settings.multi_objective and self.settings.optimization_eval_func is not None
        out = []
        for r in self.run.group_records(group.key):
            if r.status != "ok":
                continue
            speed = r.effective_speed
            out.append(Option(params=dict(r.params), seeds=dict(r.seeds), accuracy=r.accuracy,
                              speed=speed, score=speed if (speed is not None and by_speed) else r.score,
                              trial_number=r.trial_number))
        return out

    def remeasure(self, group: LayerGroup) -> None:
        """Re-measure the speed of the group's top candidates; their median decides."""
        s = self.settings
        if s.optimization_eval_func is None or not s.remeasure_top or not s.remeasure_runs \
                or s.multi_objective:
            return
        records = [r for r in self.run.group_records(group.key) if r.status == "ok" and r.speed is not None]
        records.sort(key=lambda r: r.score, reverse=True)
        top = records[: s.remeasure_top]
        if len(top) < 2:
            return
        for r in top:
            if not self.run.time_left():
                return
            try:
                samples = measure_speeds(self.run, group, r.params, dict(r.seeds), s.remeasure_runs)
            except Exception:
                continue
            r.speed_median = float(statistics.median([r.speed, *samples]))

    def finish_group(self, state: GroupSearch, remeasure: bool = True) -> None:
        """Summarise a finished group's search (after re-measuring its top candidates)."""
        run, group = self.run, state.group
        if remeasure:
            self.remeasure(group)
        best = self.group_winner(group, self.options(group))
        record_group(run, group, best, n_trials=state.count, n_evaluated=state.evaluated,
                     stop_reason=state.stop_reason)
        if best is None:
            run.log(f"[{group.key}] no feasible configuration")
        else:
            run.log(f"[{group.key}] best {best.params} score={best.score:.4g}")

    def summarize_unfinished(self) -> None:
        """After Ctrl-C: summarise the group that was being tuned, without new evaluations."""
        state = self.run.current
        if state is None or state.group.key in self.run.results.groups:
            return
        try:
            self.finish_group(state, remeasure=False)
        except Exception as exc:  # the interrupt matters more; its trials are kept regardless
            warnings.warn(f"could not summarise group {state.group.key!r} after the interrupt: "
                          f"{type(exc).__name__}: {exc}", TuningWarning, stacklevel=4)

    def group_winner(self, group: LayerGroup, options: list[Option]) -> Option | None:
        """The group's winner; once its top candidates were re-measured, only they compete.

        A row measured once would otherwise win on a lucky first sample that the re-measured
        rows gave up when their median was taken.
        """
        remeasured = {r.trial_number for r in self.run.group_records(group.key)
                      if r.speed_median is not None}
        return self.pick_winner([o for o in options if o.trial_number in remeasured] or options)

    def pick_winner(self, options: list[Option]) -> Option | None:
        """The best option: highest score, or (multi-objective, unconstrained) nearest the ideal."""
        if not options:
            return None
        if self.settings.multi_objective and self.run.threshold is None:
            # No constraint: the Pareto point closest to the ideal after min-max scaling.
            accs = [o.accuracy for o in options]
            spds = [o.speed for o in options]
            a_lo, a_hi, s_lo, s_hi = min(accs), max(accs), min(spds), max(spds)

            def distance(o: Option) -> float:
                a = 0.0 if a_hi == a_lo else (a_hi - o.accuracy) / (a_hi - a_lo)
                s = 0.0 if s_hi == s_lo else (s_hi - o.speed) / (s_hi - s_lo)
                return math.hypot(a, s)

            return min(options, key=distance)
        # Ties (equal scores) go to the earliest trial, which keeps runs reproducible.
        return max(options, key=lambda o: (o.score, -o.trial_number))

    # ---- selections --------------------------------------------------------------------------
    def choices(self, group: LayerGroup, params: dict[str, Any],
                seeds: dict[str, int | None]) -> dict[str, LayerChoice]:
        """The :class:`LayerChoice` of every layer of ``group`` for ``params``/``seeds``."""
        return {
            # for_module records the layer's class and shapes: the manifest applies to no other.
            name: LayerChoice.for_module(
                name, group.layer_types[name].name, self.run.modules[name],
                {k: v for k, v in params.items() if k != "seed"},
                seed=seeds.get(name), copy_weights=group.copy_weights)
            for name in group.layers
        }

    def winner_selection(self) -> dict[str, LayerChoice]:
        """Every summarised group's search winner, unverified."""
        selection: dict[str, LayerChoice] = {}
        for group in self.run.groups:
            summary = self.run.results.groups.get(group.key)
            if not summary or summary.get("best_params") is None:
                continue
            selection.update(self.choices(group, summary["best_params"], summary["best_seeds"] or {}))
        return selection

    def selection_of(self, choice: Choice) -> dict[str, LayerChoice]:
        """The layer choices of a per-group choice of options."""
        sel: dict[str, LayerChoice] = {}
        for g in self.finished:
            opt = choice.get(g.key)
            if opt is not None:
                sel.update(self.choices(g, opt.params, opt.seeds))
        return sel

    @staticmethod
    def signature(choice: Choice) -> tuple[Any, ...]:
        """A hashable identity of a per-group choice."""
        return tuple((k, None if o is None else o.trial_number) for k, o in sorted(choice.items()))

    def verify(self, choice: Choice, label: str) -> tuple[bool, float | None, float | None]:
        """Evaluate ``choice`` on the whole model and record the step; ``(passed, acc, speed)``."""
        sel = self.selection_of(choice)
        thr = self.run.threshold
        acc, speed, error = evaluate_selection(self.run, sel)
        passed = error is None and (thr is None or meets_threshold(acc, thr))
        self.tried.append({"step": label, "layers": sorted(sel), "accuracy": acc, "speed": speed,
                           "passed": passed, "error": error,
                           "choice": {k: (None if o is None else o.trial_number) for k, o in choice.items()}})
        self.run.log(f"verify [{label}]: {len(sel)} sketched layer(s), accuracy="
                     f"{'n/a' if acc is None else f'{acc:.4f}'} -> {'ok' if passed else 'below threshold'}")
        return passed, acc, speed

    # ---- the whole model ---------------------------------------------------------------------
    def finalize(self) -> None:
        """Choose, verify and record the final selection and report (see ``SKAutoTuner.tune``)."""
        run = self.run
        info = run.results.info
        self.finished = [g for g in run.groups if g.key in run.results.groups]
        per_group = {g.key: self.options(g) for g in self.finished}
        winners: Choice = {g.key: self.group_winner(g, per_group[g.key]) for g in self.finished}
        info["stopped_by"] = run.stop_reason
        if not self.settings.verify:
            run.results.selection = self.winner_selection()
            info["verified"] = False
            return
        if any(w is not None for w in winners.values()):
            self.warm_baseline_speed()
        base_speed = run.baseline["speed"]
        if base_speed is not None and not self.settings.multi_objective:
            # A group whose best configuration is not faster than the original model gains
            # nothing from being sketched: it stays original in the combination.
            for key, w in list(winners.items()):
                if w is not None and w.speed is not None and w.speed <= base_speed:
                    info.setdefault("kept_original", []).append(key)
                    winners[key] = None
        thr = run.threshold
        self.tried = []
        info["verification"] = self.tried
        chosen: Choice | None = None
        final_acc = final_speed = None
        if not any(w is not None for w in winners.values()):
            chosen = {}
        else:
            ok, final_acc, final_speed = self.verify(winners, "per-group winners")
            if ok:
                chosen = winners
            elif thr is not None:
                chosen, final_acc, final_speed = self.backoff(per_group, winners)
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
                          TuningWarning, stacklevel=4)
            chosen = {}
            final_acc = run.baseline["accuracy"]
            final_speed = run.baseline["speed"]
        run.results.selection = self.selection_of(chosen)
        info["verified"] = True
        base_speed, final_speed = self.final_speeds(final_speed)
        info["baseline_speed"] = base_speed
        info["final_accuracy"] = final_acc
        info["final_speed"] = final_speed
        info["speedup"] = (final_speed / base_speed) if (final_speed and base_speed) else None
        info["sketched_layers"] = sorted(run.results.selection)
        run.log(f"final: accuracy={final_acc}, speed={final_speed}, speedup={info['speedup']}, "
                f"{len(run.results.selection)} sketched layer(s)")

    def backoff(self, per_group: dict[str, list[Option]],
                winners: Choice) -> tuple[Choice | None, Any, Any]:
        """Knapsack allocation under a shrinking accuracy budget until the combination passes."""
        run = self.run
        base_acc = run.baseline["accuracy"]
        base_speed = run.baseline["speed"]
        thr = run.threshold
        for g in self.finished:
            for o in per_group[g.key]:
                o.drop = max(0.0, base_acc - (o.accuracy if o.accuracy is not None else base_acc))
                o.gain = self.gain(g, o, base_speed)
        seen = {self.signature(winners)}
        budget = max(base_acc - thr, 0.0)
        for step in range(self.settings.max_backoff_steps):
            choice = knapsack(self.finished, per_group, budget)
            sig = self.signature(choice)
            if all(o is None for o in choice.values()):
                break
            if sig not in seen:
                seen.add(sig)
                ok, acc, speed = self.verify(choice, f"knapsack budget={budget:.4g}")
                if ok:
                    return choice, acc, speed
            budget *= 0.5
            if budget <= 1e-12 and step > 0:
                budget = 0.0
        # Last resort: the single best group option, already measured alone above threshold.
        singles = sorted(
            ((o.gain, g.key, o) for g in self.finished for o in per_group[g.key] if o.gain > 0),
            key=lambda t: t[0], reverse=True)
        for _, key, o in singles[:3]:
            choice = {g.key: (o if g.key == key else None) for g in self.finished}
            if self.signature(choice) in seen:
                continue
            seen.add(self.signature(choice))
            ok, acc, speed = self.verify(choice, f"single group {key}")
            if ok:
                return choice, acc, speed
        return None, None, None

    def gain(self, group: LayerGroup, option: Option, base_speed: float | None) -> float:
        """What sketching ``group`` with ``option`` saves: time per unit of work, else MACs."""
        if base_speed and option.speed:
            return 1.0 / base_speed - 1.0 / option.speed  # time per unit of work saved
        try:
            dense, sketched = group_macs(self.run, group, option.params)
        except Exception:
            return 1.0  # no cost model: every option is worth the same
        return float(dense - sketched)

    def _original_speed(self) -> float:
        try:
            return self.run.eval_speed()
        finally:
            self.run.restore_modes()

    def warm_baseline_speed(self) -> None:
        """Re-measure the original model's speed now that the process is warm.

        The first measurement ran before any trial and pays for one-off start-up costs
        (allocations, lazy initialisation), which would flatter every sketch.
        """
        run = self.run
        run.base_samples = []
        if self.settings.optimization_eval_func is None or run.baseline["speed"] is None:
            return
        try:
            for _ in range(max(1, self.settings.remeasure_runs)):
                run.base_samples.append(self._original_speed())
        except Exception as exc:
            run.log(f"re-measuring the original model's speed failed: {exc}")
        if run.base_samples:
            run.baseline["speed"] = float(statistics.median(run.base_samples))

    def final_speeds(self, final_speed: float | None) -> tuple[float | None, float | None]:
        """Median speeds of the original and the tuned model, measured alternately.

        The baseline taken before tuning ran on a cold process (first calls pay for
        allocations and lazy initialisation), so the report re-measures both back to back.
        """
        run = self.run
        base = run.baseline["speed"]
        if (self.settings.optimization_eval_func is None or not self.settings.remeasure_runs
                or base is None or final_speed is None or not run.results.selection):
            return base, final_speed
        base_samples, final_samples = list(run.base_samples or [base]), [final_speed]
        try:
            for _ in range(self.settings.remeasure_runs):
                base_samples.append(self._original_speed())
                _, speed, error = evaluate_selection(run, run.results.selection, accuracy=False)
                if error is None and speed is not None:
                    final_samples.append(speed)
        except Exception as exc:
            run.log(f"re-measuring the final speeds failed: {exc}")
        return float(statistics.median(base_samples)), float(statistics.median(final_samples))


def record_group(run: Run, group: LayerGroup, best: Option | None, *, n_trials: int,
                 n_evaluated: int, stop_reason: str | None) -> None:
    """Write ``group``'s summary (its layers and its chosen option) and announce it to plugins."""
    summary = {
        "layers": list(group.layers),
        "layer_types": {n: group.layer_types[n].name for n in group.layers},
        "module_classes": {n: type(run.modules[n]).__name__ for n in group.layers},
        "param_names": list(group.space),
        "space": {k: repr(v) for k, v in group.space.items()},
        "copy_weights": group.copy_weights,
        "n_trials": n_trials,
        "n_evaluated": n_evaluated,
        "stop_reason": stop_reason,
        "best_params": None if best is None else dict(best.params),
        "best_score": None if best is None else best.score,
        "best_seeds": None if best is None else dict(best.seeds),
        "best_trial": None if best is None else best.trial_number,
        "best_accuracy": None if best is None else best.accuracy,
        "best_speed": None if best is None else best.speed,
    }
    run.results.groups[group.key] = summary
    plugins.emit("panther_layer_finished", layer_name=group.key,
                 best_params=summary["best_params"], best_score=summary["best_score"])


def knapsack(groups: Sequence[Any], options: dict[str, list[Option]], budget: float,
             resolution: int = 400) -> Choice:
    """Multiple-choice knapsack: at most one option per group, total drop <= budget, max gain.

    Accuracy drops are assumed additive (each was measured with the other groups
    original), which is why the result is verified afterwards.
    """
    neg = -np.inf
    best = np.full(resolution + 1, neg)
    best[0] = 0.0
    picks: list[tuple[str, np.ndarray, list[tuple[int, Option]]]] = []
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
    out: Choice = {}
    for key, choice, items in reversed(picks):
        i = int(choice[b])
        if i >= 0:
            w, o = items[i]
            out[key] = o
            b -= w
        else:
            out[key] = None
    return out


def pareto_front_mask(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    maximize: tuple[bool, bool] = (True, True),
) -> np.ndarray:
    """Boolean mask of the points no other point dominates.

    A point dominates another when it is at least as good in both objectives and
    strictly better in one. Non-finite points are never on the front; identical
    points on the front are all kept.
    """
    xs = np.asarray(x, dtype=float) * (1 if maximize[0] else -1)
    ys = np.asarray(y, dtype=float) * (1 if maximize[1] else -1)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got shapes {xs.shape} and {ys.shape}")
    mask = np.zeros(xs.shape, dtype=bool)
    idx = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
    # sweep from the best x down; a point is on the front when its y beats every
    # point with a larger (or equal, sorted earlier) x
    order = idx[np.lexsort((-ys[idx], -xs[idx]))]
    best_y, best_x = -np.inf, np.nan
    for i in order:
        if ys[i] > best_y:
            mask[i] = True
            best_y, best_x = ys[i], xs[i]
        elif ys[i] == best_y and xs[i] == best_x:
            mask[i] = True
    return mask
