"""``panther-tune worker CONFIG.toml --storage URL``: work on a run shared by many processes.

Start it as many times as you like, on one machine (``journal:///path/run.log`` or
``sqlite:///run.db``) or many (``postgresql://...``); each worker builds the model from
the config, takes proposals from the shared Optuna studies and evaluates them until
every layer group's budget is used. Then ``panther-tune finalize`` gathers the results.
See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from panther.cli.commands import Command
from panther.cli.errors import EXIT_CONFIG, CliError

__all__ = ["COMMAND", "add_storage_argument", "shared_run_errors"]


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage URL``: the storage every process of the run opens."""
    parser.add_argument(
        "--storage", default=None,
        help="the shared storage: journal:///abs/path/run.log (processes on one machine), "
             "sqlite:///run.db, or postgresql://user:pass@host/db (many machines); "
             "default: [search] storage in the config")


@contextlib.contextmanager
def shared_run_errors() -> Iterator[None]:
    """Turn the errors of a shared run into one-line CLI errors with the right exit status."""
    from panther.tuner.fingerprint import FingerprintMismatch
    from panther.tuner.storage import ConcurrentRunError, StorageError

    try:
        yield
    except (StorageError, FingerprintMismatch) as exc:
        raise CliError(str(exc), EXIT_CONFIG) from exc
    except ConcurrentRunError as exc:
        raise CliError(str(exc)) from exc
    except TypeError as exc:
        if "OptunaSearch" not in str(exc):
            raise
        raise CliError(f"{exc}; set backend = \"optuna\" in [search]", EXIT_CONFIG) from exc


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the TOML config file (the same for every worker)")
    add_storage_argument(parser)
    parser.add_argument("--device", default=None,
                        help="evaluate on this device, e.g. cuda:1 (default: $PANTHER_DEVICE, "
                             "else where the config's model is)")
    parser.add_argument("--heartbeat", type=int, default=5, metavar="S",
                        help="seconds between liveness beats (default 5); a worker on another "
                             "machine counts as dead after 4 missed beats")
    parser.add_argument("--json", action="store_true", help="print the worker's report as JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    """Build the config's tuner and work on the shared run until its budgets are used."""
    from panther.cli.commands.tune import build_tuner
    from panther.cli.config import load_tune_config
    from panther.cli.options import apply_threads

    apply_threads(args)
    if args.heartbeat < 1:
        raise CliError(f"--heartbeat must be >= 1 second, got {args.heartbeat}", EXIT_CONFIG)
    spec = load_tune_config(args.config)
    tuner = build_tuner(spec)
    with shared_run_errors():
        try:
            report = tuner.run_worker(storage=args.storage, device=args.device,
                                      heartbeat_interval=args.heartbeat)
        except ValueError as exc:  # a bad --device or a missing storage
            if "device" in str(exc) or "storage" in str(exc):
                raise CliError(str(exc), EXIT_CONFIG) from exc
            raise
    data: dict[str, Any] = dataclasses.asdict(report)
    if args.json:
        print(json.dumps(data))
    else:
        per_group = ", ".join(f"{k}: {v}" for k, v in report.groups.items()) or "none"
        print(f"worker {report.worker} (#{report.ordinal}) done: {report.evaluated} evaluation(s) "
              f"({per_group}), {report.free} free proposal(s), {report.retried} retried trial(s) "
              f"of dead workers, in {report.wall_time_s:.1f} s")
    return 0


COMMAND = Command(
    name="worker",
    help="work on a tuning run shared through a storage (start it N times)",
    description=("Evaluate proposals of the run CONFIG describes, sharing it with every other "
                 "worker on the same --storage; then run `panther-tune finalize`. "
                 "See docs/distributed.md."),
    add_arguments=_add_arguments,
    run=run,
    timed=True,
)
