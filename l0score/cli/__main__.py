"""`python -m l0score.cli ...` runs the command line as the `l0score` entry point does."""
import sys

from . import main

sys.exit(main())
