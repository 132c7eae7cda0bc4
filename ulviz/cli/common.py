"""What the commands share: the argument parser that reports a bad argument in one line, the
argument types, the SAL options of `train` and `sal`, and a progress bar."""
from __future__ import annotations

import argparse

from ..core.config import SALConfig, parse_param
from ..core.errors import UlvizError


def key_value(text: str) -> tuple[str, object]:
    try:
        return parse_param(text)
    except UlvizError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class UsageError(UlvizError):
    """A command line argparse refused (an unknown choice, a value of the wrong type)."""


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad argument is one line naming it (and, for a choice, the
    choices), not the command's whole usage: the README promises one line and exit 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog.removeprefix('ulviz ')}: {message} (see `{self.prog} --help`)")


def at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def add_sal_options(p: argparse.ArgumentParser) -> None:
    c = SALConfig()
    p.add_argument("--sal-iters", type=int, default=c.iters, help="rounds of the min/max search")
    p.add_argument("--sal-lr-min", type=float, default=c.lr_min)
    p.add_argument("--sal-lr-max", type=float, default=c.lr_max)
    p.add_argument("--sal-eps", type=float, default=c.eps, help="relative radius of the ball")
    p.add_argument("--sal-batch-size", type=int, default=c.batch_size)
    p.add_argument("--sal-split", default=c.split, choices=["train", "test"])
    p.add_argument("--sal-subset", type=int, help="first N samples only")
    p.add_argument("--sal-shuffle", action="store_true")
    p.add_argument("--sal-seed", type=int, default=c.seed)


def sal_config_from(args, estimator: str) -> SALConfig:
    return SALConfig(estimator, args.sal_iters, args.sal_lr_min, args.sal_lr_max, args.sal_eps, args.sal_batch_size,
                     args.sal_split, args.sal_subset, args.sal_shuffle, args.sal_seed)


def progress_bar(quiet: bool, desc: str):
    """A progress(done, total) callback drawing a tqdm bar, or None when quiet."""
    if quiet:
        return None
    from tqdm import tqdm
    state = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="pt")
        state["bar"].update(done - state["bar"].n)
    progress.close = lambda: state["bar"].close() if "bar" in state else None
    return progress
