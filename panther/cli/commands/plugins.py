"""``panther-tune plugins``: the installed plugins, their versions and contributions."""

from __future__ import annotations

import argparse
import dataclasses
import json

from panther.cli.commands import Command
from panther.cli.outputs import json_safe

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """List the registered plugins (``--json``: as JSON)."""
    from panther.tuner import plugins

    infos = plugins.list_plugins()
    if args.json:
        print(json.dumps([json_safe(dataclasses.asdict(i)) for i in infos], indent=2))
        return 0
    for info in infos:
        if info.builtin:
            origin = "built-in"
        elif info.distribution:
            origin = f"distribution {info.distribution}"
        else:
            origin = "registered in code"
        print(f"{info.name} {info.version or '?'} ({origin})")
        for kind, names in info.contributes.items():
            if names:
                print(f"    {kind}: {', '.join(map(str, names))}")
    if not infos:
        print("no plugins registered")
    return 0


COMMAND = Command(
    name="plugins",
    help="list installed plugins",
    description="List the registered plugins, their versions and contributions.",
    add_arguments=_add_arguments,
    run=run,
)
