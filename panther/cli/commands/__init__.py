"""The ``panther-tune`` subcommands: one module per command, listed in :data:`COMMAND_MODULES`.

To add a subcommand, write ``panther/cli/commands/NAME.py`` defining
``COMMAND = Command(...)`` (its name, help, arguments and ``run`` function) and add
``"NAME"`` to :data:`COMMAND_MODULES`; the parser, ``--help`` and ``--debug`` handling
come with it. Keep heavy imports (torch, pandas, matplotlib) inside ``run`` so that
``panther-tune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable

__all__ = ["COMMAND_MODULES", "Command", "all_commands"]

#: The command modules under ``panther.cli.commands``, in the order ``--help`` lists them.
COMMAND_MODULES = ("demo", "tune", "plugins", "show", "plot")


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand of ``panther-tune``.

    Attributes:
        name: what the user types (``panther-tune NAME``).
        help: the one line ``panther-tune --help`` shows.
        description: the paragraph ``panther-tune NAME --help`` shows.
        add_arguments: adds the command's options to its sub-parser.
        run: runs the command with the parsed arguments; returns the exit status.
        timed: print "done in X s" after a successful run (long-running commands).
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    timed: bool = False


def all_commands() -> list[Command]:
    """Every registered subcommand, in :data:`COMMAND_MODULES` order."""
    return [importlib.import_module(f"{__name__}.{name}").COMMAND for name in COMMAND_MODULES]
