"""``python -m keel.core``: the same program as the ``keel`` command."""

import sys

from keel.core.cli import main

if __name__ == "__main__":
    sys.exit(main())
