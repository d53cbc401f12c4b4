"""`python -m ism.study`: the same as `ism study`."""
import sys

from ism.study.cli import main

sys.exit(main())
