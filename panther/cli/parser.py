"""The ``panther-tune`` argument parser, built from the command registry."""

from __future__ import annotations

import argparse

from panther.cli.commands import all_commands

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``panther-tune`` parser: one sub-parser per registered command."""
    # --debug works before or after the subcommand; SUPPRESS keeps the subparser's
    # default from overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks on errors")
    parser = argparse.ArgumentParser(
        prog="panther-tune",
        description="Make PyTorch models faster by tuning sketched layers under an accuracy threshold.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in all_commands():
        cmd_parser = sub.add_parser(command.name, parents=[common], help=command.help,
                                    description=command.description)
        command.add_arguments(cmd_parser)
        cmd_parser.set_defaults(func=command.run, timed=command.timed)
    return parser
