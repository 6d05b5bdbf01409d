"""``python -m odam``: the same as the ``odam`` command."""

import sys

from odam.cli import main

if __name__ == "__main__":
    sys.exit(main())
