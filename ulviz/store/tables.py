"""Study tables: a study's summary (tables of numbers and labels, no weights) in a file of its own,
schema ``ulviz.tables``, so a finished study can be shown without its run files.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import h5py
import pandas as pd

from ..core.errors import RunFileError, UlvizError
from ..core.provenance import __version__
from .files import _as_str, _h5file, _reader, check_run_file


def _is_tables_file(path: Path) -> bool:
    try:
        with _reader(path) as f:
            return _as_str(f.attrs.get("schema", "")) == TABLES_SCHEMA
    except (RunFileError, OSError):
        return False


# -- study tables ------------------------------------------------------------------------------
# A study's summary (tables of numbers and labels, no weights), so a finished study can be shown
# without its run files: the bundled defense study is one. Schema "ulviz.tables", one group per
# table, one dataset per column.

TABLES_SCHEMA = "ulviz.tables"


def write_tables(path: str | Path, kind: str, tables: dict[str, pd.DataFrame], note: str = "") -> Path:
    """Write `tables` (name -> DataFrame of numeric or text columns) as a `kind` summary file,
    atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(schema=TABLES_SCHEMA, kind=kind, note=note, ulviz_version=__version__,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for name, df in tables.items():
            g = f.create_group(name)
            g.attrs["columns"] = json.dumps(list(df.columns))
            for col in df.columns:
                values = df[col].to_numpy()
                if values.dtype.kind in "fiub":
                    g.create_dataset(col, data=values.astype(float))
                else:
                    g.create_dataset(col, data=[str(v) for v in values], dtype=h5py.string_dtype())
    tmp.replace(path)
    return path


def read_tables(path: str | Path, kind: str) -> tuple[dict[str, pd.DataFrame], str]:
    """The tables of a `kind` summary file and its note; a clear error for anything else."""
    path = check_run_file(path)
    try:
        with _h5file(path, "r") as f:
            if _as_str(f.attrs.get("schema", "")) != TABLES_SCHEMA or _as_str(f.attrs.get("kind", "")) != kind:
                raise RunFileError(path, f"is not a ulviz {kind} summary file")
            tables = {}
            for name, g in f.items():
                cols = json.loads(_as_str(g.attrs["columns"]))
                tables[name] = pd.DataFrame({c: [_as_str(v) for v in g[c][()]] if g[c].dtype.kind in "OS"
                                             else g[c][()] for c in cols}, columns=cols)
            return tables, _as_str(f.attrs.get("note", ""))
    except UlvizError:
        raise
    except Exception as e:
        raise RunFileError(path, f"damaged summary file ({type(e).__name__}: {e})") from None
