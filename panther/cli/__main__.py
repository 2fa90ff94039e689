"""``python -m panther.cli``: the same program as ``panther-tune``."""

import sys

from panther.cli.app import main

sys.exit(main())
