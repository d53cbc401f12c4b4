"""`ism` console entry point (pyproject: ism = "ism.cli:main"): the dispatcher of ism.commands."""
from __future__ import annotations

import sys

from ism.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
