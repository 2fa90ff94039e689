"""Global allocation of sketch sizes over all layer groups under the accuracy constraint.

The classic strategy tunes each group on its own and repairs the combination afterwards.
The *guided* strategy instead chooses every group's configuration together:

1. Each group's candidates carry a *gain* (the multiply-adds saved by the cost model) and an
   *error* proxy measured without an accuracy evaluation (:mod:`panther.tuner.sensitivity`:
   the model-output error on calibration batches, else the layer-output error, else the
   predicted weight error). Candidates another one beats on both are pruned
   (:func:`pareto_prune`).
2. :func:`greedy_path` orders all groups' moves by marginal gain per added squared error
   (independent perturbations add in squares), giving a path of joint configurations from
   the original model to the most compressed one.
3. :class:`GuidedSearch` runs real evaluations of *joint* configurations: a bisection along
   the path for the furthest point that meets the threshold, then a verified hill-climb
   that tries each group's further moves from there. Accuracy is assumed to fall as
   configurations compress further, so states beyond a failed one are skipped.
4. Multi-fidelity: with an evaluator that accepts a ``fidelity`` (fraction of the validation
   data), each probe is first screened on a cheap fraction and rejected without a full
   evaluation when its accuracy drop there is far beyond the budget. Every accepted
   configuration is evaluated at full fidelity, so the chosen joint model is always verified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from panther.tuner.fidelity import screen_rejects

__all__ = [
    "Candidate",
    "Probe",
    "Choice",
    "pareto_prune",
    "greedy_path",
    "proxy_error",
    "total_gain",
    "GuidedSearch",
]

#: A joint configuration: per group key, a candidate or ``None`` (the original layers).
Choice = dict[str, "Candidate | None"]
# Below this squared-error increase a move counts as free (it is taken first).
_TINY = 1e-15


@dataclass
class Candidate:
    """One configuration of one group, with what is known about it before any evaluation.

    Attributes:
        group: the group key.
        params: the layer type's parameters (without ``seed``).
        gain: work saved against the original layers (larger is better); must be > 0.
        error: the error proxy used for ordering (relative output error of the model, or
            of the layers, or the predicted weight error).
        predicted_error: predicted weight error from the singular values (or ``None``).
        layer_error: measured relative output error of the group's layers (or ``None``).
        model_error: measured relative error of the model's output (or ``None``).
        seeds: the sketch seed of each layer of the group, fixed so rebuilds are exact.
        trial_number: the group's trial row that records this candidate.
    """

    group: str
    params: dict[str, Any]
    gain: float
    error: float
    predicted_error: float | None = None
    layer_error: float | None = None
    model_error: float | None = None
    seeds: dict[str, int | None] = field(default_factory=dict)
    trial_number: int = -1


@dataclass
class Probe:
    """One real evaluation of a joint configuration."""

    step: str
    choice: Choice
    fidelity: float
    accuracy: float | None
    speed: float | None
    passed: bool
    error: str | None
    proxy: float
    gain: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (groups map to their candidate's params, or ``None``)."""
        return {
            "step": self.step, "fidelity": self.fidelity, "accuracy": self.accuracy,
            "speed": self.speed, "passed": self.passed, "error": self.error,
            "predicted_error": self.proxy, "gain": self.gain,
            "choice": {k: (None if c is None else dict(c.params)) for k, c in self.choice.items()},
        }


def pareto_prune(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Keep the candidates no other one beats on both gain and error; sorted by gain, ascending.

    Of candidates with equal gain and error the first one given is kept (the caller's
    order breaks ties, e.g. fewer terms first). Candidates without a positive gain or with
    a non-finite error are dropped.
    """
    usable = [c for c in candidates if c.gain > 0 and math.isfinite(c.error)]
    order = sorted(range(len(usable)), key=lambda i: (-usable[i].gain, usable[i].error, i))
    kept: list[Candidate] = []
    best_error = math.inf
    for i in order:
        c = usable[i]
        if c.error < best_error:
            kept.append(c)
            best_error = c.error
    return sorted(kept, key=lambda c: c.gain)


def proxy_error(choice: Choice) -> float:
    """Combined error proxy of a joint configuration: ``sqrt(sum of squared errors)``."""
    return math.sqrt(sum(c.error ** 2 for c in choice.values() if c is not None))


def total_gain(choice: Choice) -> float:
    """Total work saved by a joint configuration."""
    return sum(c.gain for c in choice.values() if c is not None)


def _best_move(options: dict[str, list[Candidate]], state: Choice,
               exclude: Callable[[str, Candidate], bool] | None = None,
               ) -> list[tuple[float, float, str, Candidate]]:
    """Every move to a candidate of higher gain, best marginal gain per squared error first."""
    moves = []
    for key, cands in options.items():
        cur = state.get(key)
        g0, e0 = (0.0, 0.0) if cur is None else (cur.gain, cur.error ** 2)
        for c in cands:
            if c.gain <= g0 or (exclude is not None and exclude(key, c)):
                continue
            d_err = c.error ** 2 - e0
            ratio = math.inf if d_err <= _TINY else (c.gain - g0) / d_err
            moves.append((ratio, -d_err, key, c))
    moves.sort(key=lambda m: (m[0], m[1], m[3].gain), reverse=True)
    return moves


def greedy_path(options: dict[str, list[Candidate]]) -> list[Choice]:
    """Joint configurations from all-original to most compressed, best moves first.

    Each step moves one group to a candidate of higher gain, choosing the move with the
    largest gain per added squared error (a move that adds no error goes first). The first
    entry is the original model (every group ``None``).
    """
    state: Choice = {key: None for key in options}
    path = [dict(state)]
    while True:
        moves = _best_move(options, state)
        if not moves:
            return path
        _, _, key, cand = moves[0]
        state[key] = cand
        path.append(dict(state))


def _dominates(a: Choice, b: Choice) -> bool:
    """Whether ``a`` compresses every group at least as much as ``b`` (by gain)."""
    for key in set(a) | set(b):
        ga = 0.0 if a.get(key) is None else a[key].gain
        gb = 0.0 if b.get(key) is None else b[key].gain
        if ga < gb:
            return False
    return True


def _signature(choice: Choice) -> tuple[Any, ...]:
    return tuple(sorted((k, None if c is None else id(c)) for k, c in choice.items()))


#: ``evaluate(choice, fidelity) -> (accuracy, speed, error)``; speed only when requested.
Evaluate = Callable[[Choice, float], "tuple[float | None, float | None, str | None]"]


class GuidedSearch:
    """Bisection along the greedy path, then a verified hill-climb (module docstring).

    Args:
        options: per group key, its candidates (they are Pareto-pruned here).
        evaluate: ``(choice, fidelity) -> (accuracy, speed, error)``; at fidelity 1 the
            speed is measured when the accuracy meets the threshold.
        threshold: the minimum accuracy.
        baseline_accuracy: the original model's accuracy at full fidelity.
        max_evaluations: at most this many evaluations in full-evaluation equivalents
            (a screen at fidelity ``f`` costs ``f``).
        screen_fidelity: the cheap fidelity of the screens, or ``None`` for no screening.
        time_left: returns ``False`` once the run's time budget is spent.
    """

    def __init__(self, options: dict[str, list[Candidate]], evaluate: Evaluate,
                 threshold: float, baseline_accuracy: float, max_evaluations: float,
                 screen_fidelity: float | None = None,
                 time_left: Callable[[], bool] | None = None) -> None:
        if screen_fidelity is not None and not 0.0 < screen_fidelity < 1.0:
            raise ValueError(f"screen_fidelity must be in (0, 1), got {screen_fidelity!r}")
        if not max_evaluations > 0:
            raise ValueError(f"max_evaluations must be > 0, got {max_evaluations!r}")
        self.options = {k: pareto_prune(v) for k, v in options.items()}
        self.evaluate = evaluate
        self.threshold = float(threshold)
        self.baseline_accuracy = float(baseline_accuracy)
        self.max_evaluations = float(max_evaluations)
        self.screen_fidelity = screen_fidelity
        self.time_left = time_left or (lambda: True)
        self.probes: list[Probe] = []
        self.cost = 0.0
        self.full_evaluations = 0
        self.screens = 0
        self.screened_out = 0
        self._screen_base: float | None = None
        self._verdicts: dict[tuple[Any, ...], bool] = {}
        self._failed: list[Choice] = []
        self._passed: list[Probe] = []

    # ---------------------------------------------------------------- budget
    def _affordable(self, fidelity: float) -> bool:
        return self.cost + fidelity <= self.max_evaluations + 1e-9 and self.time_left()

    # ---------------------------------------------------------------- one probe
    def _screen(self, choice: Choice, step: str) -> bool | None:
        """Cheap check: ``False`` when clearly infeasible, ``True`` to go on, ``None`` if unaffordable."""
        f = self.screen_fidelity
        if f is None:
            return True
        if self._screen_base is None:
            if not self._affordable(2 * f + 1.0):
                return True  # not worth a baseline screen: go straight to the full evaluation
            acc, _, err = self.evaluate({}, f)
            self.cost += f
            self.screens += 1
            if err is not None or acc is None:
                self.screen_fidelity = None  # the evaluator cannot screen: stop trying
                return True
            self._screen_base = acc
        if not self._affordable(f + 1.0):
            return True
        acc, _, err = self.evaluate(choice, f)
        self.cost += f
        self.screens += 1
        budget = max(self.baseline_accuracy - self.threshold, 0.0)
        passed = err is None and acc is not None and not screen_rejects(self._screen_base, acc, budget, f)
        self.probes.append(Probe(step=f"{step} (screen)", choice=dict(choice), fidelity=f,
                                 accuracy=acc, speed=None, passed=passed, error=err,
                                 proxy=proxy_error(choice), gain=total_gain(choice)))
        if not passed:
            self.screened_out += 1
        return passed

    def probe(self, choice: Choice, step: str) -> bool | None:
        """Whether ``choice`` meets the threshold (full evaluation after a screen).

        ``None`` when the budget is spent. Known outcomes are reused, and states at least
        as compressed as a failed one are taken as failing without an evaluation.
        """
        sig = _signature(choice)
        if sig in self._verdicts:
            return self._verdicts[sig]
        if any(_dominates(choice, bad) for bad in self._failed):
            return False
        if not self._affordable(1.0):
            return None
        screened = self._screen(choice, step)
        if screened is False:
            self._verdicts[sig] = False
            self._failed.append(dict(choice))
            return False
        if not self._affordable(1.0):
            return None
        acc, speed, err = self.evaluate(choice, 1.0)
        self.cost += 1.0
        self.full_evaluations += 1
        passed = err is None and acc is not None and acc >= self.threshold
        probe = Probe(step=step, choice=dict(choice), fidelity=1.0, accuracy=acc, speed=speed,
                      passed=passed, error=err, proxy=proxy_error(choice), gain=total_gain(choice))
        self.probes.append(probe)
        self._verdicts[sig] = passed
        if passed:
            self._passed.append(probe)
        else:
            self._failed.append(dict(choice))
        return passed

    # ---------------------------------------------------------------- the search
    def run(self) -> Probe | None:
        """Search; return the verified probe with the largest gain (``None``: nothing passed)."""
        path = greedy_path(self.options)
        self.path = path
        lo, hi = 0, len(path) - 1  # path[lo] is the original model: feasible by definition
        # The most compressed point first: when it passes there is nothing left to search.
        if hi > 0:
            verdict = self.probe(path[hi], f"path {hi}/{hi}")
            if verdict:
                lo = hi
            elif verdict is None:
                return self.best()
        while hi - lo > 1:
            mid = (lo + hi) // 2
            verdict = self.probe(path[mid], f"path {mid}/{len(path) - 1}")
            if verdict is None:
                return self.best()
            if verdict:
                lo = mid
            else:
                hi = mid
        self._climb(path[lo])
        return self.best()

    def _climb(self, state: Choice) -> None:
        """From a feasible state, try each group's further moves; keep any that passes."""
        state = dict(state)
        while True:
            improved = False
            for _, _, key, cand in _best_move(self.options, state):
                trial = {**state, key: cand}
                verdict = self.probe(trial, f"refine {key}")
                if verdict is None:
                    return
                if verdict:
                    state = trial
                    improved = True
                    break
            if not improved:
                return

    def best(self) -> Probe | None:
        """The passing full evaluation with the largest gain (ties: the faster, then the first)."""
        if not self._passed:
            return None
        return max(self._passed, key=lambda p: (p.gain, -math.inf if p.speed is None else p.speed))
