"""``panther-tune finalize CONFIG.toml --storage URL``: gather a shared run and verify it.

Reads every group's trials from the storage, re-measures the top candidates, combines
and verifies them exactly as ``panther-tune tune`` does, and writes the same outputs
(results JSON/CSV, tuned state_dict, plots, summary). No new configuration is evaluated.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from panther.cli.commands import Command
from panther.cli.commands.worker import add_storage_argument, shared_run_errors
from panther.cli.errors import EXIT_CONFIG, CliError

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from panther.cli.options import add_run_options

    parser.add_argument("config", help="the TOML config file the workers used")
    add_storage_argument(parser)
    parser.add_argument("--output", default=None,
                        help="output folder (default: the config's output or panther-tune-output)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for running workers to finish instead of refusing")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="with --wait, give up after S seconds")
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    """Finalize the shared run and write the same outputs as ``tune``."""
    from panther.cli.commands.tune import build_tuner, report_run
    from panther.cli.config import load_tune_config
    from panther.cli.options import apply_threads
    from panther.cli.outputs import prepare_output

    apply_threads(args)
    if args.timeout is not None and not args.wait:
        raise CliError("--timeout needs --wait", EXIT_CONFIG)
    spec = load_tune_config(args.config)
    original = copy.deepcopy(spec.model).eval()
    tuner = build_tuner(spec)
    # Created after the config and the tuner are checked, before the storage is read.
    output = prepare_output(Path(args.output or spec.output or "panther-tune-output"))
    with shared_run_errors():
        try:
            tuner.finalize(storage=args.storage, wait=args.wait, timeout=args.timeout)
        except ValueError as exc:
            if "storage" not in str(exc):
                raise
            raise CliError(str(exc), EXIT_CONFIG) from exc
    return report_run(tuner, spec, original, output, interrupted=False, plots=args.plots)


COMMAND = Command(
    name="finalize",
    help="gather a shared run, verify the combination, write the results",
    description=("Gather the trials every worker stored in --storage, verify the combined "
                 "model as `tune` does and write the same outputs. See docs/distributed.md."),
    add_arguments=_add_arguments,
    run=run,
    timed=True,
)
