"""The ``panther-tune`` argument parser, built from the command registry."""

from __future__ import annotations

import argparse

from panther.cli.commands import all_commands

__all__ = ["build_parser", "plugin_selection"]


def build_parser() -> argparse.ArgumentParser:
    """The ``panther-tune`` parser: one sub-parser per registered command."""
    # --debug works before or after the subcommand; SUPPRESS keeps the subparser's
    # default from overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks on errors")
    _add_plugin_options(common, "_sub")
    parser = argparse.ArgumentParser(
        prog="panther-tune",
        description="Make PyTorch models faster by tuning sketched layers under an accuracy threshold.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    _add_plugin_options(parser, "")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in all_commands():
        cmd_parser = sub.add_parser(command.name, parents=[common], help=command.help,
                                    description=command.description)
        command.add_arguments(cmd_parser)
        cmd_parser.set_defaults(func=command.run, timed=command.timed)
    return parser


def _add_plugin_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    # Global options, accepted before or after the subcommand: the two places keep
    # separate lists (a subparser would overwrite the main parser's), merged by
    # plugin_selection().
    parser.add_argument(
        "--plugin", action="append", dest=f"plugin_only{suffix}", metavar="NAME", default=[],
        help="load only this installed plugin (entry-point or distribution name), plus the "
             "built-ins; repeat for several (as PANTHER_PLUGINS)",
    )
    parser.add_argument(
        "--no-plugin", action="append", dest=f"plugin_disable{suffix}", metavar="NAME",
        default=[], help="do not load this plugin; repeat for several (as PANTHER_DISABLE_PLUGINS)",
    )


def plugin_selection(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The ``--plugin`` and ``--no-plugin`` names given anywhere on the command line."""
    only = [*getattr(args, "plugin_only", []), *getattr(args, "plugin_only_sub", [])]
    disable = [*getattr(args, "plugin_disable", []), *getattr(args, "plugin_disable_sub", [])]
    return only, disable
