"""``python -m ulviz.cli ...``: the `ulviz` command run as a module (how jobs and sweeps start a
worker, with the interpreter that runs them)."""
import sys

from .main import main

sys.exit(main())
