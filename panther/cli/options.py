"""Options shared by the commands that tune (``demo``, ``tune``): threads and plots."""

from __future__ import annotations

import argparse

from panther.cli.errors import EXIT_CONFIG, CliError

__all__ = ["add_run_options", "apply_threads"]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` and ``--no-plots`` to a tuning command's parser."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 helps on a busy machine")
    parser.add_argument("--no-plots", dest="plots", action="store_false",
                        help="do not draw plots/trials.png (saves time on large runs)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (checked first; nothing when absent)."""
    if args.threads is None:
        return
    if args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}", EXIT_CONFIG)
    import torch

    torch.set_num_threads(args.threads)
