"""``main()``: parse the command line, run the command, turn errors into exit statuses."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence

from panther.cli.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_RUNTIME, CliError
from panther.cli.parser import build_parser, plugin_selection

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``panther-tune`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    try:
        only, disable = plugin_selection(args)
        # Also when none are given but the host is already loaded (main() called again
        # in one process): each run's selection is its own.
        if only or disable or "panther.tuner.plugins" in sys.modules:
            from panther.tuner import plugins

            plugins.configure(only=only, disable=disable)
        code = args.func(args)
    except CliError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"panther-tune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("panther-tune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return EXIT_RUNTIME
    except Exception as exc:  # one clear line unless --debug
        if _is_plugin_error(exc):
            # Ambiguous plugin names, strict-mode plugin problems and bad selections are
            # configuration errors: fixed by choosing plugins, not by re-running.
            if args.debug:
                traceback.print_exc()
            print(f"panther-tune: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if args.debug:
            traceback.print_exc()
        print(f"panther-tune: {type(exc).__name__}: {exc}\n  (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME
    if args.timed:
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


def _is_plugin_error(exc: BaseException) -> bool:
    plugins = sys.modules.get("panther.tuner.plugins")  # loaded if a plugin could have raised
    return plugins is not None and isinstance(exc, plugins.PluginError)
