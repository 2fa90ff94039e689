"""``panther-tune show RESULTS``: the trials, the winners and the report of a saved run."""

from __future__ import annotations

import argparse
import math

from panther.cli.commands import Command
from panther.cli.outputs import is_cached, load_results
from panther.cli.report import print_report

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results file (save_tuning_results) or an output folder")
    parser.add_argument("--max-rows", type=int, default=60, help="trial rows to print (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Print the trials (cached repeats counted, not listed), the winners and the summary."""
    import pandas as pd

    df, results, summary, path = load_results(args.results)
    repeats = is_cached(df)
    note = f" ({int(repeats.sum())} repeated proposal(s) answered from the cache not shown)" \
        if repeats.any() else ""
    print(f"results {path}: {len(df)} trial(s){note}")
    if len(df):
        view = df[~repeats].copy()
        if "error" in view:
            # Skip reasons and error texts can be long; the start says which it is.
            view["error"] = view["error"].map(
                lambda e: "" if not isinstance(e, str) else (e if len(e) <= 48 else e[:45] + "...")
            )
        hidden = {"speed_median"}
        columns = [c for c in view.columns if c not in hidden and not view[c].isna().all()
                   and not (view[c].astype(str) == "").all()]
        with pd.option_context("display.max_rows", args.max_rows, "display.width", 200,
                               "display.max_columns", 30):
            print(view[columns].to_string(index=False, max_rows=args.max_rows))
        print("\nwinners (best feasible score of each search):")
        scores = view["score"].astype(float)
        feasible = view[scores.apply(math.isfinite)]
        if len(feasible):
            best = feasible.loc[feasible.groupby("layer_name", sort=False)["score"].idxmax()]
            print(best[[c for c in columns if c != "error"]].to_string(index=False))
        else:
            print("  none: every trial was rejected, skipped or failed")
    if results is not None:
        print("\napplied configuration (verified on the whole model):" if results.info.get("verified")
              else "\napplied configuration:")
        if results.selection:
            for name, choice in results.selection.items():
                print(f"  {name}: {choice.layer_type} {choice.params} seed={choice.seed}")
        else:
            print("  none: the original model is kept")
    if summary is not None:
        print_report(summary)
    return 0


COMMAND = Command(
    name="show",
    help="print the trials and winners of a saved run",
    description="Print the trials and the winners of saved results.",
    add_arguments=_add_arguments,
    run=run,
)
