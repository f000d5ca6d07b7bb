"""``python -m convirt``: the ``convirt`` command, as ``python -m convirt.cli``."""

import sys

from .cli import main

sys.exit(main())
