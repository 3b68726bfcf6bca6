"""`python -m calign` is the `calign` command (see calign.cli)."""

import sys

from calign.cli import main

if __name__ == "__main__":
    sys.exit(main())
