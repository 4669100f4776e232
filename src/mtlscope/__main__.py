"""``python -m mtlscope``: the command line (``mtlscope.cli``)."""

import sys

from mtlscope.cli import main

sys.exit(main())
