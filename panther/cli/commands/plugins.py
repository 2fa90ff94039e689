"""``panther-tune plugins``: the plugins, their contributions, and what is broken or ambiguous."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

from panther.cli.commands import Command
from panther.cli.outputs import json_safe
from panther.cli.parser import plugin_selection

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help='print JSON: {"plugins": [...], "broken": [...], "conflicts": [...]}')
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a plugin is broken or a name is claimed twice (for CI)")


def run(args: argparse.Namespace) -> int:
    """List the plugins, then the broken ones and the conflicts; ``--check`` fails on either."""
    from panther.tuner import plugins

    only, disable = plugin_selection(args)
    # Collect every problem instead of stopping at the first one (as strict mode
    # would); the listing reports them all, and --check turns them into the status.
    plugins.configure(only=only, disable=disable, strict=False)
    with warnings.catch_warnings():
        # Shown below in their own section; the warning lines would repeat them.
        warnings.simplefilter("ignore", plugins.PluginWarning)
        infos = plugins.list_plugins()
        broken = plugins.problems()
        conflicts = plugins.conflicts()
    failed = bool(broken or conflicts)
    if args.json:
        report = {
            "plugins": [dataclasses.asdict(i) for i in infos],
            "broken": [dataclasses.asdict(p) for p in broken],
            "conflicts": [dataclasses.asdict(c) for c in conflicts],
        }
        print(json.dumps(json_safe(report), indent=2))
        return 1 if args.check and failed else 0
    for info in infos:
        origin = info.origin if not info.distribution or info.builtin else (
            f"distribution {info.distribution}")
        print(f"{info.name} {info.version or '?'} ({origin})")
        for kind, names in info.contributes.items():
            if names:
                print(f"    {kind}: {', '.join(map(str, names))}")
    if not infos:
        print("no plugins registered")
    note = plugins.selection_note()
    if note:
        print(f"\nnote: {note}")
    if broken:
        print(f"\nbroken plugins ({len(broken)}):")
        for problem in broken:
            print(f"  {problem.plugin} [{problem.stage}]: {problem.message}")
    if conflicts:
        print(f"\nconflicts ({len(conflicts)}):")
        for conflict in conflicts:
            print(f"  {conflict.registry} {conflict.name!r}: {conflict.message}")
    if args.check:
        print("\ncheck: " + ("FAILED" if failed else "ok, no broken plugins and no conflicts"))
        return 1 if failed else 0
    return 0


COMMAND = Command(
    name="plugins",
    help="list installed plugins; --check for broken plugins and name conflicts",
    description="List the registered plugins, their versions and contributions, then the "
                "plugins that failed to load or do not match the hook specs, and the names "
                "several plugins claim. --check exits 1 when there is any of either.",
    add_arguments=_add_arguments,
    run=run,
)
