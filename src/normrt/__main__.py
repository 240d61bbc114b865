"""`python -m normrt`: the `normrt` command (see normrt.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
