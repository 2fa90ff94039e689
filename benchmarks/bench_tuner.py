"""What SKAutoTuner's safeguards buy (issue 6): verified accuracy, fewer wasted evaluations.

A fixed small model (an MLP of four Linear layers (64-256-256-256-16) whose weights have a decaying
spectrum, like trained ones) is tuned with a cheap, deterministic evaluator pair:

* accuracy: ``agreement`` with the original model's predictions on fixed inputs;
* speed: ``flops(inverse=True)`` from the layer-type cost models, so the reported
  speed-up is the ratio of multiply-adds of the sketched layers (no timing noise).

Each variant runs ``OptunaSearch(n_trials=30)`` per layer (TPE) over the same space, for
several seeds, at an accuracy threshold of 0.99:

* ``reference``: the tutorial's algorithm: infeasible trials told as ``-inf``, every
  suggestion evaluated (no dedupe, no cost-model skip), winners combined unverified;
* ``no verify``: panther's search (graded penalties, dedupe, cost skip) but the per-layer
  winners are combined unverified;
* ``panther``: all features: graded penalties + constraints, dedupe, cost-model skip,
  verified combination with knapsack back-off.

Reported per variant (mean over seeds): trials requested (evaluations: ``n_trials`` per layer)
and run (every proposal, including the skipped and cached ones that cost no evaluation), those
skipped by the cost model or answered from the cache, distinct evaluations
(calls of the accuracy function during the searches), tuner overhead per trial (wall time
minus the evaluation functions: layer builds and bookkeeping), the accuracy of the model
``apply_best_params()`` returns (measured afterwards), how often it meets the threshold,
and its speed-up ("at threshold": only counted when the threshold is met, else 1.0).

A second table (issue 10) measures the cost of the trial loop itself: three
``Linear(64, 64)`` layers, a constant accuracy function, ``OptunaSearch(n_trials=20)``
per layer (60 evaluations requested), each layer's "auto" space. It reports CPU time
(``time.process_time``, so other processes on a busy machine do not inflate it) per
proposal and per evaluated trial, excluding the user's evaluation functions, split
into Optuna's ask/tell, the layer builds, and the tuner's own bookkeeping (the rest),
next to a bare Optuna ask/tell loop over the same space (the floor, as a ratio), and
the time of ``apply_best_params()``. Target: at most 3 ms per trial excluding the
user's functions; ``apply_best_params`` well under 10 ms.

Usage: ``python benchmarks/bench_tuner.py [--seeds 5] [--trials 30] [--quick] [--overhead]``
(``--overhead``: only the second table). Results go to ``benchmarks/results/bench_tuner.json``
(``bench_tuner_quick.json`` with ``--quick``, ``bench_tuner_overhead.json`` with ``--overhead``).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _common import print_table, setup, write_json
from torch import nn

from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs
from panther.tuner.evaluators import agreement, flops

THRESHOLD = 0.99


def decaying_linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        u = torch.linalg.qr(torch.randn(n_out, n_out, generator=gen))[0]
        v = torch.linalg.qr(torch.randn(n_in, n_in, generator=gen))[0]
        r = min(n_in, n_out)
        s = 0.95 ** torch.arange(r, dtype=torch.float32) * 2.0
        layer.weight.copy_(u[:, :r] @ torch.diag(s) @ v[:, :r].T)
        layer.bias.copy_(torch.randn(n_out, generator=gen) * 0.1)
    return layer


def make_model() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    return nn.Sequential(
        decaying_linear(64, 256, gen), nn.ReLU(),
        decaying_linear(256, 256, gen), nn.ReLU(),
        decaying_linear(256, 256, gen), nn.ReLU(),
        decaying_linear(256, 16, gen),
    ).eval()


VARIANTS = {
    "reference": dict(dedupe=False, skip_costlier=False, verify=False, penalize=False),
    "no verify": dict(dedupe=True, skip_costlier=True, verify=False, penalize=True),
    "panther": dict(dedupe=True, skip_costlier=True, verify=True, penalize=True),
}


def run(variant: str, seed: int, n_trials: int) -> dict:
    opts = VARIANTS[variant]
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(128, 64, generator=gen) for _ in range(4)]
    base_acc = agreement(model, inputs)
    calls = {"n": 0}

    def accuracy(m: nn.Module) -> float:
        calls["n"] += 1
        return base_acc(m)

    speed = flops(inverse=True)
    config = LayerConfig({"type": "Linear", "range": [0, 4]}, {
        "num_terms": Categorical([1, 2, 3]),
        "low_rank": Categorical([4, 8, 16, 32, 48, 64, 96]),
        "init": Categorical(["random", "svd"]),
    })
    tuner = SKAutoTuner(
        model, TuningConfigs([config]), accuracy, accuracy_threshold=THRESHOLD,
        optmization_eval_func=speed, search_algorithm=OptunaSearch(n_trials=n_trials, seed=seed),
        dedupe=opts["dedupe"], skip_costlier=opts["skip_costlier"], verify=opts["verify"],
        remeasure_top=0, seed=seed,
    )
    tuner._penalize_infeasible = opts["penalize"]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.tune()
        wall = time.perf_counter() - start
        search_calls = calls["n"]
        tuned = tuner.apply_best_params()
    rows = tuner.results.trials
    overhead = [r["wall_time_s"] - r.get("eval_time_s", 0.0) for r in rows if r.get("wall_time_s") is not None]
    acc = base_acc(tuned)
    met = acc >= THRESHOLD
    speedup = speed(tuned) / speed(model)
    baseline_calls = 1 if (opts["verify"]) else 0
    return {
        "variant": variant,
        "seed": seed,
        "trials_requested": n_trials * 4,
        "trials_run": len(rows),
        "free_proposals": sum(r["status"] in ("skipped", "cached") for r in rows),
        "distinct_evaluations": search_calls - baseline_calls - len(tuner.report.get("verification", [])),
        "overhead_ms_per_trial": 1e3 * statistics.mean(overhead) if overhead else 0.0,
        "final_accuracy": acc,
        "meets_threshold": met,
        "flops_speedup": speedup,
        "speedup_at_threshold": speedup if met else 1.0,
        "wall_s": wall,
    }


def _loop_overhead(repeats: int) -> dict:
    """CPU milliseconds of the trial loop on a tiny model (see the module docstring)."""
    import panther.tuner.trials as trials
    from panther.tuner.search.optuna import OptunaSearch as Optuna

    clock = time.process_time
    spent = {"optuna": 0.0, "builds": 0.0, "user": 0.0}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += clock() - t0
        return wrapper

    # Timing wrappers for this measurement only; restored below.
    saved = (Optuna.ask, Optuna.tell, trials.build_group)
    Optuna.ask, Optuna.tell = timed("optuna", Optuna.ask), timed("optuna", Optuna.tell)
    trials.build_group = timed("builds", trials.build_group)
    rows = []
    try:
        for rep in range(repeats + 1):  # the first run warms up imports and caches
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64))
            accuracy = timed("user", lambda m: 1.0)
            tuner = SKAutoTuner(model, LayerConfig({"type": "Linear"}, "auto"), accuracy,
                                search_algorithm=OptunaSearch(n_trials=20, seed=rep), verify=False)
            for key in spent:
                spent[key] = 0.0
            start = clock()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tuner.tune()
            total = clock() - start - spent["user"]
            proposals = len(tuner.results.trials)
            evaluated = sum(r["status"] not in ("skipped", "cached") for r in tuner.results.trials)
            start = clock()
            for _ in range(10):
                tuner.apply_best_params()
            apply_ms = (clock() - start) / 10 * 1e3
            if rep:
                rows.append({"proposals": proposals, "evaluated": evaluated, "total": total,
                             "optuna": spent["optuna"], "builds": spent["builds"], "apply_ms": apply_ms})
    finally:
        Optuna.ask, Optuna.tell, trials.build_group = saved
    # The floor: a bare Optuna ask/tell loop over the same spaces, as many proposals.
    import optuna

    space = LayerType_auto_space()
    n = round(statistics.mean(r["proposals"] for r in rows))
    start = clock()
    for rep in range(repeats):
        for _layer in range(3):
            study = optuna.create_study(direction="maximize",
                                        sampler=optuna.samplers.TPESampler(seed=rep))
            for _ in range(n // 3):
                trial = study.ask(space)
                study.tell(trial, 1.0)
    bare = (clock() - start) / (repeats * 3 * (n // 3))
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    per_proposal = mean["total"] / mean["proposals"] * 1e3
    return {
        "proposals": mean["proposals"],
        "evaluated": mean["evaluated"],
        "ms/proposal (excl. user fns)": per_proposal,
        "ms/evaluated trial (excl. user fns)": mean["total"] / mean["evaluated"] * 1e3,
        "of which optuna ms/proposal": mean["optuna"] / mean["proposals"] * 1e3,
        "of which builds ms/proposal": mean["builds"] / mean["proposals"] * 1e3,
        "bookkeeping ms/proposal": (mean["total"] - mean["optuna"] - mean["builds"])
        / mean["proposals"] * 1e3,
        "bare optuna ms/proposal": bare * 1e3,
        "tuner / bare optuna": per_proposal / (bare * 1e3),
        "apply_best_params ms": mean["apply_ms"],
    }


def LayerType_auto_space() -> dict:  # noqa: N802 - mirrors what the tuner hands Optuna
    """The Optuna distributions of a ``Linear(64, 64)``'s auto space."""
    from panther.tuner import plugins
    from panther.tuner.search.optuna import _Codec

    layer = nn.Linear(64, 64)
    space = plugins.layer_type_for(layer).auto_space(layer)
    return {name: _Codec(name, spec).distribution for name, spec in space.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 trials (smoke run)")
    parser.add_argument("--overhead", action="store_true", help="only the trial-loop cost table")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials = 1, 10
    env = setup(args.threads)
    loop = _loop_overhead(repeats=1 if args.quick else 3)
    print_table([{"measure": k, "value": v} for k, v in loop.items()],
                title="Trial-loop cost: 3 x Linear(64, 64), constant accuracy, Optuna TPE, "
                      "20 evaluations per layer (CPU time)")
    if args.overhead:
        path = write_json("bench_tuner_overhead", {"loop_overhead": loop, "environment": env})
        print(f"\nwrote {path}")
        return
    runs = [run(v, s, args.trials) for s in range(args.seeds) for v in VARIANTS]
    summary = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        summary.append({
            "variant": variant,
            "trials requested": mine[0]["trials_requested"],
            "trials run": statistics.mean(r["trials_run"] for r in mine),
            "skipped+cached": statistics.mean(r["free_proposals"] for r in mine),
            "distinct evals": statistics.mean(r["distinct_evaluations"] for r in mine),
            "overhead ms/trial": statistics.mean(r["overhead_ms_per_trial"] for r in mine),
            "final acc": statistics.mean(r["final_accuracy"] for r in mine),
            "meets thr": f"{sum(r['meets_threshold'] for r in mine)}/{len(mine)}",
            "speed-up @thr": statistics.mean(r["speedup_at_threshold"] for r in mine),
            "wall s": statistics.mean(r["wall_s"] for r in mine),
        })
    print_table(summary, title=f"SKAutoTuner, threshold {THRESHOLD}, {args.trials} trials/layer, "
                               f"{args.seeds} seed(s) (means)")
    path = write_json("bench_tuner_quick" if args.quick else "bench_tuner",
                      {"threshold": THRESHOLD, "trials_per_layer": args.trials, "seeds": args.seeds,
                       "summary": summary, "runs": runs, "loop_overhead": loop, "environment": env})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
