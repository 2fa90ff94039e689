"""``panther-tune``: tune a model's sketched layers from the command line.

Subcommands (one module each under :mod:`panther.cli.commands`):

``demo``
    Train a small digits classifier, tune it under an accuracy threshold and
    report the speed-up (what ``make demo`` runs).
``tune CONFIG.toml``
    Tune your own model described by a TOML file (see ``docs/cli.md``).
``plugins``
    List the installed plugins, their versions and what each contributes.
``show RESULTS`` / ``plot RESULTS``
    Inspect a saved run: a table of trials and winners, or a PNG of them.

Errors in a config file are reported as one message naming the file, the key and the
fix, with exit status 2; ``--debug`` adds the Python traceback.

Layout: :mod:`~panther.cli.parser` (argparse, from the command registry),
:mod:`~panther.cli.schema` (the config's keys and checks), :mod:`~panther.cli.build`
(user objects, evaluators, search backends), :mod:`~panther.cli.config` (reading a
config), :mod:`~panther.cli.report` (the before/after report),
:mod:`~panther.cli.outputs` (the output folder: checked first, written last, rescued on
failure), :mod:`~panther.cli.options` (``--threads``, ``--no-plots``) and
:mod:`~panther.cli.app` (``main``). A new subcommand goes in :mod:`panther.cli.commands`.
"""

from __future__ import annotations

from panther.cli.app import main
from panther.cli.config import TuneSpec, load_tune_config
from panther.cli.errors import CliError, ConfigError
from panther.cli.outputs import write_outputs
from panther.cli.parser import build_parser
from panther.cli.report import print_report

__all__ = [
    "CliError",
    "ConfigError",
    "TuneSpec",
    "load_tune_config",
    "print_report",
    "write_outputs",
    "build_parser",
    "main",
]
