"""``python -m rnnengine``: the same command line as the ``rnnengine`` console script."""
import sys

from .cli import main

sys.exit(main())
