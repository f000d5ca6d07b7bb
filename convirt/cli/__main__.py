"""``python -m convirt.cli``: the ``convirt`` command."""

import sys

from . import main

sys.exit(main())
