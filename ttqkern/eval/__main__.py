"""``python -m ttqkern.eval`` — see `ttqkern.eval.cli`."""

import sys

from .cli import main

sys.exit(main())
