"""What analyses add to a finished run file: SAL computed after training (post-hoc, resumable,
one row per epoch) and the per-layer sharpness atlas.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .files import _append_row, _as_str, _fixed, _reader, check_run_file, open_for_update
from .runs import SAL_PARTS, _append_sal, _create_sal_group


def prepare_sal(path: str | Path, layer_names: list[str], settings: dict) -> list[int]:
    """Make the run file's SAL group hold `settings`; the epochs already computed with them.

    Rows made with other settings (or none) are dropped, so a file never mixes estimators. Rows
    made with the same settings are kept, which is what lets an interrupted computation resume.
    """
    with open_for_update(path) as f:
        g = f["sal"]
        same = (json.loads(_as_str(g.attrs["layers"])) == list(layer_names)
                and json.loads(_as_str(g.attrs["settings"])) == settings)
        if not same:
            del f["sal"]
            _create_sal_group(f, list(layer_names), settings)
        g = f["sal"]
        rows = min([g["epoch"].shape[0]] + [g[p].shape[0] for p in SAL_PARTS])
        return [int(e) for e in g["epoch"][:rows]]


def append_sal_row(path: str | Path, epoch: int, parts: dict[str, np.ndarray]) -> None:
    """Append one epoch's SAL to a finished run file; opened and closed per row, so a kill
    between rows (where the time is spent) never leaves the file open."""
    with open_for_update(path) as f:
        g = f["sal"]
        rows = min([g["epoch"].shape[0]] + [g[p].shape[0] for p in SAL_PARTS])
        for name in ("epoch", *SAL_PARTS):  # drop the tail of a row cut off by a kill
            if g[name].shape[0] > rows:
                g[name].resize(rows, axis=0)
        _append_sal(f, epoch, parts)


# -- the sharpness atlas ---------------------------------------------------------------------
#
#    /sharpness/<measure>   attrs: layers (JSON), settings (JSON of what the values depend on)
#                           epoch (rows,), values (rows, layers): one row per computed epoch
#
# Like SAL: a measure recomputed with other settings replaces its rows, rows made with the same
# settings are kept (an interrupted computation resumes), the epoch is written after its values.

def prepare_sharpness(path: str | Path, measure: str, layer_names: list[str], settings: dict) -> list[int]:
    """Make the run file's /sharpness/<measure> group hold `settings`; the epochs already computed with them."""
    with open_for_update(path) as f:
        root = f.require_group("sharpness")
        g = root.get(measure)
        if g is not None and not (json.loads(_as_str(g.attrs.get("layers", "[]"))) == list(layer_names)
                                  and json.loads(_as_str(g.attrs.get("settings", "{}"))) == settings):
            del root[measure]
            g = None
        if g is None:
            g = root.create_group(measure)
            g.attrs["layers"] = _fixed(json.dumps(list(layer_names)))
            g.attrs["settings"] = _fixed(json.dumps(settings))
            g.create_dataset("epoch", shape=(0,), maxshape=(None,), chunks=(256,), dtype="i8")
            g.create_dataset("values", shape=(0, len(layer_names)), maxshape=(None, len(layer_names)),
                             chunks=(64, max(len(layer_names), 1)), dtype="f8")
        return [int(e) for e in g["epoch"][:min(g["epoch"].shape[0], g["values"].shape[0])]]


def append_sharpness_row(path: str | Path, measure: str, epoch: int, values: np.ndarray) -> None:
    """Append one epoch's values (one per layer) of `measure`; the file is opened per row."""
    with open_for_update(path) as f:
        g = f["sharpness"][measure]
        rows = min(g["epoch"].shape[0], g["values"].shape[0])
        g["values"].resize(rows, axis=0)  # drop a row cut off by a kill
        _append_row(g["values"], np.asarray(values, dtype=np.float64))
        g["epoch"].resize(rows, axis=0)
        _append_row(g["epoch"], epoch)


def read_sharpness(path: str | Path) -> dict[str, dict]:
    """measure -> {"epochs", "values" (rows sorted by epoch, one column per layer), "layers",
    "settings"} for every measure stored in the run file; {} when none is."""
    path = check_run_file(path)
    out = {}
    with _reader(path) as f:
        for measure, g in (f["sharpness"].items() if "sharpness" in f else []):
            rows = min(g["epoch"].shape[0], g["values"].shape[0])
            epochs, values = np.array(g["epoch"][:rows], dtype=int), np.array(g["values"][:rows])
            order = np.argsort(epochs, kind="stable")
            out[measure] = {"epochs": epochs[order], "values": values[order],
                            "layers": json.loads(_as_str(g.attrs["layers"])),
                            "settings": json.loads(_as_str(g.attrs["settings"]))}
    return out
