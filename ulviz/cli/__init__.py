"""The cli layer, the top of the package: the `ulviz` command (pyproject's ``ulviz =
"ulviz.cli:main"``), and ``python -m ulviz.cli ...``, the way jobs and sweeps start a worker.

main (the parser, in the order `ulviz --help` lists the commands, and :func:`main`), one module per
group of commands: runs (train, info, list, verify, poison), measures (sal, ud, probe, landscape,
paths, sharpness, surgery), studies (demo, crosstask, sweep), and common (what they share). It
may import every layer; nothing in the package imports it.
"""
from .main import main

__all__ = ["main"]
