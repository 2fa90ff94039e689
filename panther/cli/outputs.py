"""The output folder of a run: what ``demo``/``tune`` write and ``show``/``plot`` read back."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panther.cli.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_RUNTIME, CliError
from panther.cli.report import layer_choices, print_report, trial_counts

__all__ = [
    "PLOTS_DIR",
    "RESULTS_CSV",
    "RESULTS_JSON",
    "STATE_DICT",
    "SUMMARY_JSON",
    "is_cached",
    "json_safe",
    "finish_run",
    "load_results",
    "prepare_output",
    "print_files",
    "save_or_rescue",
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


def prepare_output(output: Path) -> Path:
    """Create the output folder and check that it takes files, before any work starts.

    Raises a :class:`CliError` (exit status 2) naming the folder when it is a file, cannot
    be created, or cannot be written to, so that a long run never ends unable to save.
    """
    if output.exists() and not output.is_dir():
        raise CliError(f"the output {output} is a file, not a folder: pass --output with a "
                       "folder path (it is created if missing)", EXIT_CONFIG)
    probe = output / ".panther-write-check"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write to the output folder {output} ({type(exc).__name__}: "
                       f"{exc.strerror or exc}): pass --output with a folder you can write to",
                       EXIT_CONFIG) from exc
    return output


def _rescue_folders() -> list[Path]:
    """Where results go when the output folder fails at the end: here, else the temp folder."""
    name = f"panther-tune-rescue-{time.strftime('%Y%m%d-%H%M%S')}"
    return [Path.cwd() / name, Path(tempfile.gettempdir()) / name]


def save_or_rescue(output: Path, save: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``save(output)``; if writing there fails, ``save`` into a rescue folder instead.

    Returns the folder used and what ``save`` returned. When the rescue is used a
    warning naming both folders is printed; when every folder fails a :class:`CliError`
    says what went wrong where.
    """
    try:
        return output, save(output)
    except OSError as exc:
        first = exc
    failures = [f"{output}: {type(first).__name__}: {first}"]
    for folder in _rescue_folders():
        try:
            result = save(folder)
        except OSError as exc:
            failures.append(f"{folder}: {type(exc).__name__}: {exc}")
            continue
        print(f"panther-tune: warning: could not write to {output} ({type(first).__name__}: {first}); "
              f"the results were saved to {folder.resolve()} instead", file=sys.stderr)
        return folder, result
    raise CliError("could not save the results anywhere:\n  " + "\n  ".join(failures), EXIT_RUNTIME)


def write_outputs(
    tuner: Any, tuned: Any, summary: dict[str, Any], output: Path, plots: bool = True
) -> dict[str, str]:
    """Write results (JSON manifest + CSV), the tuned state_dict, the trial plot and the summary.

    With ``plots=False`` no plot is drawn (a plot of an earlier run in ``output`` is
    still removed, so it cannot be mistaken for this run's). Returns ``{what: path}``
    of the files written (also stored in ``summary.json``).
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
    plot_dir = output / PLOTS_DIR
    # Plots left by an earlier run in this folder would be mistaken for this run's.
    for stale in plot_dir.glob("*.png"):
        stale.unlink()
    if plots:
        plot_dir.mkdir(exist_ok=True)
        try:
            files["trials_plot"] = str(save_trial_plot(df, plot_dir / "trials.png", summary.get("title", ""),
                                                       summary.get("threshold"),
                                                       summary.get("score_name", "score")))
        except OSError:
            raise
        except Exception as exc:  # a plotting problem must not lose the results
            print(f"warning: the trial plot failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    summary = {**summary, "files": files}
    (output / SUMMARY_JSON).write_text(json.dumps(json_safe(summary), indent=2))
    files["summary"] = str(output / SUMMARY_JSON)
    return files


def finish_run(tuner: Any, original: Any, tuned: Any, summary: dict[str, Any], output: Path, *,
               interrupted: bool, plots: bool = True) -> int:
    """Print the report of a finished (or interrupted) run, save its outputs, list them.

    ``summary`` (the command's own figures) gains what every run reports: the replaced
    layers, the trial counts by status (which say why no layer was replaced), whether it
    was interrupted and torch's thread count. Returns the exit status: 130 after Ctrl-C;
    1 when the outputs had to go to a rescue folder (the requested folder does not hold
    them); else 0.
    """
    import torch

    summary = {
        **summary,
        "layers": layer_choices(original, tuned),
        "trials": trial_counts(tuner.get_results_dataframe()),
        "interrupted": interrupted,
        "torch_threads": torch.get_num_threads(),
    }
    print_report(summary)
    saved, files = save_or_rescue(output, lambda folder: write_outputs(tuner, tuned, summary, folder,
                                                                       plots=plots))
    print_files(saved, files)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_RUNTIME if saved != output else 0


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
        def save(folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            tuner.save_tuning_results(str(folder / RESULTS_JSON))
            tuner.get_results_dataframe().to_csv(folder / RESULTS_CSV, index=False)

        saved, _ = save_or_rescue(output, save)
        print(f"\ninterrupted: the trials so far are saved in {saved}; writing the rest "
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
            summary = _read_summary(path / SUMMARY_JSON)
        path = path / RESULTS_JSON
    if not path.exists():
        raise CliError(
            f"no results at {path}: pass a results file written by save_tuning_results "
            "or the output folder of panther-tune demo/tune", EXIT_CONFIG,
        )
    if path.suffix == ".csv":
        try:
            df = pd.read_csv(path)
        except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
            raise CliError(f"cannot read the trials table {path} ({type(exc).__name__}: {exc}): pass "
                           "the results.csv of a run, or its results.json", EXIT_CONFIG) from exc
        missing = [c for c in ("layer_name", "score") if c not in df.columns]
        if missing:
            raise CliError(
                f"{path} is not a panther trials table: it lacks the column(s) {', '.join(missing)} "
                f"(its columns: {', '.join(map(str, df.columns)) or 'none'}); pass the results.csv "
                "of a run or a file written by get_results_dataframe().to_csv()", EXIT_CONFIG)
        return df, None, summary, path
    from panther.tuner import load_tuning_results

    try:
        results = load_tuning_results(path)
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read results {path}: {exc}", EXIT_CONFIG) from exc
    return results.to_dataframe(), results, summary, path


def _read_summary(path: Path) -> dict[str, Any]:
    """A run's ``summary.json``, or a CliError naming the file and what is wrong with it."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CliError(f"cannot read the run summary {path} ({type(exc).__name__}: {exc}): "
                       "delete it (show then prints the trials only) or re-run", EXIT_CONFIG) from exc
    ok = isinstance(summary, dict) and all(
        isinstance(summary.get(k), dict) and isinstance(summary[k].get("params"), int)
        for k in ("before", "after"))
    if not ok:
        raise CliError(f"the run summary {path} is not one panther-tune wrote (it needs 'before' and "
                       "'after' tables with a 'params' count): delete it or re-run", EXIT_CONFIG)
    return summary


def is_cached(df: Any) -> Any:
    """Rows that repeat an earlier trial's result (status ``cached``): no new information."""
    import pandas as pd

    if "status" not in df:
        return pd.Series(False, index=df.index)
    return df["status"] == "cached"
