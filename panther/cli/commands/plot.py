"""``panther-tune plot RESULTS``: a PNG of a saved run's trials."""

from __future__ import annotations

import argparse
from pathlib import Path

from panther.cli.commands import Command
from panther.cli.outputs import load_results

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results file (save_tuning_results) or an output folder")
    parser.add_argument("--output", default=None, help="PNG path (default: next to the results)")


def run(args: argparse.Namespace) -> int:
    """Draw the run with :func:`panther.tuner.visualizer.save_trial_plot`."""
    from panther.tuner.visualizer import save_trial_plot

    df, results, summary, path = load_results(args.results)
    out = Path(args.output) if args.output else path.with_name(path.stem + "_trials.png")
    summary = summary or {}
    threshold = (results.info.get("effective_threshold") if results is not None
                 else summary.get("threshold"))
    save_trial_plot(df, out, title=summary.get("title") or str(path), threshold=threshold,
                    score_label=summary.get("score_name", "score"))
    print(f"wrote {out.resolve()}")
    return 0


COMMAND = Command(
    name="plot",
    help="plot a saved run to PNG",
    description="Plot score and accuracy per trial of saved results.",
    add_arguments=_add_arguments,
    run=run,
)
