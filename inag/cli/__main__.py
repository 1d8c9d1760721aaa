"""``python -m inag.cli ...``: the same as the ``inag`` command."""

import sys

from inag.cli import main

sys.exit(main())
