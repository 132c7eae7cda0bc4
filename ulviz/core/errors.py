"""The library's own exception types.

Every error a user can cause (a wrong path, a corrupt file, an unknown name) is raised as a
subclass of :class:`UlvizError`, so the CLI and the dashboard can show one clear line instead
of a traceback.
"""
from __future__ import annotations

from pathlib import Path


class UlvizError(Exception):
    """Base class for errors caused by input: shown to the user as one line."""


class DataError(UlvizError):
    """A dataset could not be loaded: missing file, wrong format, malformed arrays."""


class UnknownNameError(UlvizError, KeyError):
    """A name (model, dataset, unlearnable method, estimator) is not in its registry."""

    def __init__(self, family: str, name: str, known: list[str]):
        self.family, self.name, self.known = family, name, list(known)
        super().__init__(f"unknown {family} {name!r}; choose one of: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class RunFileError(UlvizError):
    """A run file is missing, corrupt, from another program or from a newer ulviz."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class DivergedError(UlvizError):
    """Training produced a NaN or infinite loss."""
