"""``panther-tune status CONFIG.toml --storage URL [--json]``: progress of a shared run.

Per layer group: evaluations done (of the budget), running, waiting (re-enqueued trials
of dead workers), failed, free proposals (cached or skipped) and the best score so far;
then the live workers. Reads only the config's ``[search]`` table: the model is not built.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from panther.cli.commands import Command
from panther.cli.commands.worker import add_storage_argument, shared_run_errors
from panther.cli.errors import ConfigError

__all__ = ["COMMAND"]

#: The ``[search] n_trials`` a config without one gets (as ``tune`` does).
_DEFAULT_CLI_TRIALS = 20


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the TOML config file the workers use")
    add_storage_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def _search_table(path: Path) -> dict[str, Any]:
    from panther.cli.config import _read_toml

    raw = _read_toml(path)
    table = raw.get("search", {})
    if not isinstance(table, dict):
        raise ConfigError(path, "search", "expected a [search] table", "write [search] with storage = ...")
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Print the run's progress as a table (or JSON)."""
    from panther.cli.report import _print_table
    from panther.tuner.worker import run_status

    path = Path(args.config)
    table = _search_table(path)
    storage = args.storage or table.get("storage")
    if not isinstance(storage, str):
        raise ConfigError(path, "search.storage", "no storage to read the run from",
                          "pass --storage URL or set storage = \"...\" in [search]")
    study = table.get("study_name")
    budget = table.get("n_trials", _DEFAULT_CLI_TRIALS)
    with shared_run_errors():
        status = run_status(storage, study if isinstance(study, str) else None)
    status["budget"] = budget if isinstance(budget, int) else None
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    print(f"run {status['run']!r} in {status['storage']}")
    if not status["studies"]:
        print("no layer group has started yet")
    else:
        rows = [[s["group"], f"{s['evaluated']}/{_fmt(status['budget'])}", s["running"],
                 s["waiting"], s["failed"], s["free"], _fmt(s["best_score"]),
                 _fmt(s["best_params"])] for s in status["studies"]]
        _print_table(["group", "evaluated", "running", "waiting", "failed", "free", "best",
                      "best params"], rows)
    now = time.time()
    workers = status["workers"]
    print(f"\n{len(workers)} live process(es)")
    if workers:
        _print_table(["role", "pid", "host", "up (s)", "last beat (s)", "evaluating"],
                     [[w["role"], w["pid"], w["host"], f"{now - w['started']:.0f}",
                       w["last_beat_s"], _fmt(w["current"])] for w in workers])
    return 0


COMMAND = Command(
    name="status",
    help="show the progress of a shared run (per group, and live workers)",
    description="Show each layer group's progress and the live workers of the run in --storage.",
    add_arguments=_add_arguments,
    run=run,
)
