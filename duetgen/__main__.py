"""``python -m duetgen`` is the ``duetgen`` command."""

import sys

from .cli import main

sys.exit(main())
