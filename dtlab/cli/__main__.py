"""``python -m dtlab.cli ...`` is the ``dtlab`` console script (tests run it this way)."""
import sys

from . import main

sys.exit(main())
