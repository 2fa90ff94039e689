"""``panther-tune demo``: train a digits classifier, tune it, report the speed-up."""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from panther.cli.commands import Command
from panther.cli.errors import EXIT_CONFIG, CliError
from panther.cli.options import add_run_options, apply_threads
from panther.cli.outputs import finish_run, prepare_output, tune_keeping_results
from panther.cli.report import param_count

__all__ = ["COMMAND"]

DEMO_SIZES = {
    # width, channels, epochs, timing batch
    False: (2048, 32, 8, 256),
    True: (512, 16, 4, 64),
}
# Ranks the demo tries: small enough that the accuracy threshold decides (at ranks 2-3
# the trained MLP loses most of its accuracy, from about 4 on it keeps it).
DEMO_RANKS = {
    False: ([2, 3, 4, 6, 8, 16, 32], [1, 2, 4]),
    True: ([2, 4, 8], [2, 4]),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="panther-demo-output", help="output folder (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per layer (default: every point of the demo's search space)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, training and search")
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer trials (a smoke test)")
    parser.add_argument("--tolerance", type=float, default=0.015,
                        help="allowed accuracy drop from the original (default: %(default)s)")
    parser.add_argument("--objective", choices=("flops", "throughput"), default="flops",
                        help="what the search maximises under the threshold: 'flops' (fewest FLOPs, "
                        "exact and reproducible) or 'throughput' (measured, noisy); default %(default)s")
    parser.add_argument("--speed-check", action="store_true",
                        help="also time each candidate layer against the dense one and skip it "
                        "unless it is faster (catches FLOP savings that are wall-clock losses; "
                        "timing makes the choices depend on machine load)")
    add_run_options(parser)


def _demo_space(layer_type: Any, ranks: list[int]) -> dict[str, Any]:
    """The demo's search space for one layer type: ranks to try, data-aware init if offered."""
    from panther.tuner import Categorical

    space: dict[str, Any] = {}
    names = layer_type.param_names
    if "num_terms" in names:
        # One term: with the SVD initialisation a second term of rank k costs as much as
        # one term of rank 2k and is no more accurate, so it only lengthens the search.
        space["num_terms"] = Categorical([1])
    if "low_rank" in names:
        space["low_rank"] = Categorical(ranks)
    if "init" in names:
        # A random sketch of a trained layer throws its weights away; the SVD
        # initialisation keeps the dominant part of the trained map.
        space["init"] = Categorical(["svd"])
    return space


def _warm_up_sketches() -> None:
    """Run a tiny sketched layer once so loading the native kernels is not charged to a trial."""
    import torch

    from panther.nn import SKLinear

    with torch.no_grad():
        SKLinear(8, 8, num_terms=1, low_rank=2, seed=0)(torch.zeros(1, 8))


def run(args: argparse.Namespace) -> int:
    """Train a digits model, tune it, report before/after and write the outputs."""
    import torch

    from panther import demo
    from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs, plugins
    from panther.tuner.settings import AccuracyConstraint

    width, channels, epochs, batch = DEMO_SIZES[bool(args.quick)]
    ranks_fc, ranks_conv = DEMO_RANKS[bool(args.quick)]
    # By default every point of the (small) spaces is tried once.
    trials = args.trials if args.trials is not None else max(len(ranks_fc), len(ranks_conv))
    if trials < 1:
        raise CliError("--trials must be >= 1", EXIT_CONFIG)
    if not 0 <= args.tolerance < 1:
        raise CliError("--tolerance must lie in [0, 1), e.g. 0.015 for 1.5 points", EXIT_CONFIG)
    apply_threads(args)
    output = prepare_output(Path(args.output))
    torch.manual_seed(args.seed)

    data = demo.load_digits_data(seed=args.seed)
    model = demo.DigitsNet(width=width, channels=channels)
    print(f"digits: {len(data.x_train)} train / {len(data.x_val)} validation images; model "
          f"conv(1->{channels}->{channels}) + MLP {channels * 16}->{width}->{width}->10")
    t0 = time.perf_counter()
    demo.train_model(model, data, epochs=epochs, seed=args.seed,
                     on_epoch=lambda e, loss: print(f"  epoch {e + 1}/{epochs}  loss {loss:.4f}", flush=True))
    original = copy.deepcopy(model).eval()
    base_acc = demo.accuracy(model, data.x_val, data.y_val)
    threshold = AccuracyConstraint("drop", args.tolerance).resolve(base_acc)
    print(f"trained in {time.perf_counter() - t0:.1f} s: validation accuracy {base_acc:.4f}; "
          f"tuning for accuracy >= {threshold:.4f} (tolerance {args.tolerance})")

    def accuracy_fn(m: Any) -> float:
        return demo.accuracy(m, data.x_val, data.y_val)

    example = data.x_val[:1]
    base_flops = demo.count_flops(model, example)
    timing_batch = data.x_val.repeat(batch // len(data.x_val) + 1, 1, 1, 1)[:batch]
    if args.objective == "flops":
        def speed_fn(m: Any) -> float:
            # FLOP reduction factor: exact, so the same seed gives the same winners.
            return base_flops / demo.count_flops(m, example)
    else:
        def speed_fn(m: Any) -> float:
            return demo.measure_throughput(m, timing_batch, iterations=5, repeats=3, warmup=1)

    linear = plugins.get_layer_type("Linear")
    conv = plugins.get_layer_type("Conv2d")
    configs = TuningConfigs([
        LayerConfig(["fc1", "fc2"], _demo_space(linear, ranks_fc), separate=True),
        LayerConfig("conv2", _demo_space(conv, ranks_conv), separate=True),
    ])
    _warm_up_sketches()
    tuner = SKAutoTuner(
        model,
        configs,
        accuracy_fn,
        # Optuna's brute-force sampler walks the small spaces without repeats; with
        # --trials below their size it stops early.
        search_algorithm=OptunaSearch(n_trials=trials, sampler="bruteforce", seed=args.seed),
        accuracy_threshold=threshold,
        optmization_eval_func=speed_fn,
        progress=True,
        seed=args.seed,
        # Off by default: the pre-check times each candidate against the dense layer,
        # which on a busy machine rejects good candidates at random and makes the
        # choices irreproducible. The final table measures real throughput either way.
        speed_precheck=bool(args.speed_check),
    )
    interrupted = tune_keeping_results(tuner, output)
    tuned = tuner.apply_best_params().eval()

    after_acc = accuracy_fn(tuned)
    print(f"timing both models on batches of {batch} (interleaved rounds, fastest kept) ...", flush=True)
    speeds = demo.compare_throughput({"before": original, "after": tuned}, timing_batch)
    summary = {
        "title": "panther-tune demo (digits)",
        "seed": args.seed,
        "quick": bool(args.quick),
        "objective": args.objective,
        "trials_per_layer": trials,
        "threshold": threshold,
        "tolerance": args.tolerance,
        "speed_name": f"samples/s (batch {batch})",
        "score_name": ("score = model FLOP reduction (x)" if args.objective == "flops"
                       else f"score = samples/s (batch {batch})"),
        "speed_format": ".1f",
        "before": {"accuracy": base_acc, "speed": speeds["before"], "flops": base_flops,
                   "params": param_count(original)},
        "after": {"accuracy": after_acc, "speed": speeds["after"],
                  "flops": demo.count_flops(tuned, example), "params": param_count(tuned)},
        "verified": tuner.report.get("verified"),
    }
    return finish_run(tuner, original, tuned, summary, output, interrupted=interrupted, plots=args.plots)


COMMAND = Command(
    name="demo",
    help="train, tune and report on the digits data",
    description="Train a conv+MLP digits classifier, tune Linear and Conv2d "
    "layers under an accuracy threshold and report the speed-up.",
    add_arguments=_add_arguments,
    run=run,
    timed=True,
)
