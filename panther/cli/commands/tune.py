"""``panther-tune tune CONFIG.toml``: tune the model a config file describes."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from panther.cli.commands import Command
from panther.cli.config import load_tune_config
from panther.cli.errors import ConfigError
from panther.cli.options import add_run_options, apply_threads
from panther.cli.outputs import finish_run, prepare_output, tune_keeping_results
from panther.cli.report import param_count

__all__ = ["COMMAND", "build_tuner", "report_run"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the TOML config file")
    parser.add_argument("--output", default=None, help="output folder, created and checked before tuning "
                        "(default: the config's output or panther-tune-output)")
    add_run_options(parser)


def _constraint_kwargs(constraint: Any) -> dict[str, Any]:
    """The tuner's keyword arguments for ``constraint``, as the constraint itself spells them.

    A drop or relative constraint is resolved by the tuner, which measures the original
    model once; the CLI never computes a threshold of its own.
    """
    if constraint is None:
        return {}
    return {k: v for k, v in constraint.legacy_info().items() if v is not None}


def build_tuner(spec: Any) -> Any:
    """The ``SKAutoTuner`` a config describes (``tune``, ``worker`` and ``finalize`` share it)."""
    from panther.tuner import SKAutoTuner

    seed = spec.search_settings.get("seed")
    try:
        return SKAutoTuner(
            spec.model,
            spec.configs,
            spec.accuracy_fn,
            search_algorithm=spec.search,
            verbose=spec.verbose,
            optmization_eval_func=spec.speed_fn,
            num_runs_per_param=spec.num_runs_per_param,
            progress=True,
            seed=seed if isinstance(seed, int) else 0,
            **_constraint_kwargs(spec.threshold),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(spec.path, "layers", str(exc), "fix the [[layers]] tables") from exc


def report_run(tuner: Any, spec: Any, original: Any, output: Path, interrupted: bool,
               plots: bool = True) -> int:
    """Print the before/after report of a finished run and write its outputs."""
    tuned = tuner.apply_best_params().eval()
    info = tuner.report
    before_acc = info.get("baseline_accuracy")
    before_speed = info.get("baseline_speed")
    after_acc = info.get("final_accuracy")
    after_speed = info.get("final_speed")
    # The tuner verifies the combined model; measure ourselves when it did not, except after
    # Ctrl-C, when the user asked to stop: the report then says "not measured".
    if not interrupted:
        if before_acc is None:
            before_acc = float(spec.accuracy_fn(original))
        if after_acc is None:
            after_acc = float(spec.accuracy_fn(tuned))
        if spec.speed_fn is not None:
            if before_speed is None:
                before_speed = float(spec.speed_fn(original))
            if after_speed is None:
                after_speed = float(spec.speed_fn(tuned))
    summary = {
        "title": f"panther-tune {spec.path.name}",
        "config": str(spec.path.resolve()),
        "search": spec.search_settings,
        "threshold": info.get("effective_threshold"),
        "verified": info.get("verified"),
        "speed_name": spec.speed_label,
        "score_name": f"score = {spec.speed_label}" if spec.speed_fn is not None else "score = accuracy",
        "before": {"accuracy": before_acc, "speed": before_speed, "params": param_count(original)},
        "after": {"accuracy": after_acc, "speed": after_speed, "params": param_count(tuned)},
        "best_params": tuner.get_best_params(),
    }
    return finish_run(tuner, original, tuned, summary, output, interrupted=interrupted, plots=plots)


def run(args: argparse.Namespace) -> int:
    """Load and check the config, tune, print the report and write the outputs."""
    apply_threads(args)
    spec = load_tune_config(args.config)
    original = copy.deepcopy(spec.model).eval()
    print(f"config {spec.path}: {len(spec.configs)} layer config(s), search {spec.search_settings}")
    tuner = build_tuner(spec)
    # Checked after the config and the tuner (whose errors come first, leaving no folder
    # behind) and before any tuning: a run must never end unable to save what it found.
    output = prepare_output(Path(args.output or spec.output or "panther-tune-output"))
    interrupted = tune_keeping_results(tuner, output)
    return report_run(tuner, spec, original, output, interrupted, plots=args.plots)


COMMAND = Command(
    name="tune",
    help="tune a model described by a TOML config",
    description="Tune the model named in CONFIG (TOML); see docs/cli.md.",
    add_arguments=_add_arguments,
    run=run,
    timed=True,
)
