"""The output folder of a run: what ``demo``/``tune`` write and ``show``/``plot`` read back."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from panther.cli.errors import EXIT_CONFIG, CliError

__all__ = [
    "PLOTS_DIR",
    "RESULTS_CSV",
    "RESULTS_JSON",
    "STATE_DICT",
    "SUMMARY_JSON",
    "is_cached",
    "json_safe",
    "load_results",
    "print_files",
    "tune_keeping_results",
    "write_outputs",
]

# Names of the files a run writes into its output folder.
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SUMMARY_JSON = "summary.json"
STATE_DICT = "tuned_model.pt"
PLOTS_DIR = "plots"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings and unknown objects as their repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_outputs(
    tuner: Any, tuned: Any, summary: dict[str, Any], output: Path
) -> dict[str, str]:
    """Write results (JSON manifest + CSV), the tuned state_dict, the trial plot and the summary.

    Returns ``{what: path}`` of the files written (also stored in ``summary.json``).
    """
    import torch

    from panther.tuner.visualizer import save_trial_plot

    output.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    tuner.save_tuning_results(str(output / RESULTS_JSON))
    files["results"] = str(output / RESULTS_JSON)
    df = tuner.get_results_dataframe()
    df.to_csv(output / RESULTS_CSV, index=False)
    files["trials_csv"] = str(output / RESULTS_CSV)
    torch.save(tuned.state_dict(), output / STATE_DICT)
    files["state_dict"] = str(output / STATE_DICT)
    plots = output / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    # Plots left by an earlier run in this folder would be mistaken for this run's.
    for stale in plots.glob("*.png"):
        stale.unlink()
    try:
        files["trials_plot"] = str(save_trial_plot(df, plots / "trials.png", summary.get("title", ""),
                                                   summary.get("threshold"),
                                                   summary.get("score_name", "score")))
    except Exception as exc:  # a plotting problem must not lose the results
        print(f"warning: the trial plot failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    summary = {**summary, "files": files}
    (output / SUMMARY_JSON).write_text(json.dumps(json_safe(summary), indent=2))
    files["summary"] = str(output / SUMMARY_JSON)
    return files


def print_files(output: Path, files: dict[str, str]) -> None:
    """List the files a run wrote, relative to its output folder."""
    print(f"\nwrote to {output.resolve()}:")
    for path in files.values():
        print(f"  {Path(path).relative_to(output) if Path(path).is_relative_to(output) else path}")


def tune_keeping_results(tuner: Any, output: Path) -> bool:
    """Run ``tuner.tune()``; on Ctrl-C keep what was found. Returns whether it was interrupted.

    The tuner restores the model and keeps the trials so far when interrupted. They are
    written to ``output`` at once, before anything else runs, so a second Ctrl-C or a failure
    while the caller finishes its report cannot lose them.
    """
    try:
        tuner.tune()
    except KeyboardInterrupt:
        output.mkdir(parents=True, exist_ok=True)
        tuner.save_tuning_results(str(output / RESULTS_JSON))
        tuner.get_results_dataframe().to_csv(output / RESULTS_CSV, index=False)
        print(f"\ninterrupted: the trials so far are saved in {output}; writing the rest "
              "(unverified)", file=sys.stderr)
        return True
    return False


def load_results(path_arg: str) -> tuple[Any, Any, dict[str, Any] | None, Path]:
    """Trials DataFrame, the results object (``None`` for a CSV), the run summary and the path."""
    import pandas as pd

    path = Path(path_arg)
    summary = None
    if path.is_dir():
        if (path / SUMMARY_JSON).is_file():
            summary = json.loads((path / SUMMARY_JSON).read_text())
        path = path / RESULTS_JSON
    if not path.exists():
        raise CliError(
            f"no results at {path}: pass a results file written by save_tuning_results "
            "or the output folder of panther-tune demo/tune", EXIT_CONFIG,
        )
    if path.suffix == ".csv":
        return pd.read_csv(path), None, summary, path
    from panther.tuner import load_tuning_results

    try:
        results = load_tuning_results(path)
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read results {path}: {exc}", EXIT_CONFIG) from exc
    return results.to_dataframe(), results, summary, path


def is_cached(df: Any) -> Any:
    """Rows that repeat an earlier trial's result (status ``cached``): no new information."""
    import pandas as pd

    if "status" not in df:
        return pd.Series(False, index=df.index)
    return df["status"] == "cached"
