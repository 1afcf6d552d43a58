"""``python -m tinygpt ...``: the ``tinygpt`` command, for machines where the package is on the path but
not installed (no console script)."""

import sys

from tinygpt.cli import main

sys.exit(main())
