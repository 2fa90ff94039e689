"""``main()``: parse the command line, run the command, turn errors into exit statuses."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence

from panther.cli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, CliError
from panther.cli.parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``panther-tune`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    try:
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
        if args.debug:
            traceback.print_exc()
        print(f"panther-tune: {type(exc).__name__}: {exc}\n  (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME
    if args.timed:
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code
