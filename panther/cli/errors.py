"""The errors ``panther-tune`` reports to the user, and its exit statuses."""

from __future__ import annotations

import os

__all__ = ["EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_RUNTIME", "CliError", "ConfigError"]

#: Something failed while running (a crashed plugin, an unwritable disk, ...).
EXIT_RUNTIME = 1
#: A problem in the command line or the config file, found before any work starts.
EXIT_CONFIG = 2
#: Ctrl-C: what was found so far is kept (as shells report SIGINT: 128 + 2).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error meant for the user: printed as one message, exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(CliError):
    """A problem in a config file, pinned to the file and the offending key.

    Args:
        path: the config file.
        key: dotted key path such as ``layers[0].selector`` (``""`` for the whole file).
        problem: what is wrong.
        fix: what to do about it.
    """

    def __init__(self, path: str | os.PathLike[str], key: str, problem: str, fix: str) -> None:
        self.path = os.fspath(path)
        self.key = key
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: key '{key}'" if key else self.path
        super().__init__(f"error in {where}: {problem}\n  fix: {fix}", EXIT_CONFIG)
