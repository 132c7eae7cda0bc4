"""The `ulviz` command line: the parser of every command, in the order `ulviz --help` lists them,
and :func:`main`, which runs one command and turns errors into one line and an exit code."""
from __future__ import annotations

import os
import signal
import sys

from ..core.errors import UlvizError
from ..core.provenance import __version__
from . import measures, runs, studies
from .common import Parser, UsageError

DESCRIPTION = "The `ulviz` command: train runs, inspect run files, list what the registries hold."
COMMANDS = {**runs.COMMANDS, **measures.COMMANDS, **studies.COMMANDS}


def _parser() -> Parser:
    p = Parser(prog="ulviz", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"ulviz {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (runs.add_train, runs.add_info, runs.add_list, runs.add_verify, runs.add_poison, studies.add_demo,
                measures.add_sal, measures.add_ud, studies.add_crosstask, studies.add_sweep, measures.add_probe,
                measures.add_landscape, measures.add_paths, measures.add_sharpness, measures.add_surgery):
        add(sub)
    return p


def _sigterm(signum, frame):
    # a job cancelled from the dashboard gets SIGTERM: unwind like Ctrl-C so the status is written
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"ulviz: error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        rc = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows up here, in our handler, rather than at exit
        return rc
    except UlvizError as e:
        print(f"ulviz: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ulviz: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ulviz info RUN | head`): not an error of ours
        # point stdout at devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
